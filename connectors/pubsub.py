"""Google Cloud Pub/Sub source and sink.

Source URL: ``pubsub://project/subscription?idle_exit=5s&ack_lag=2&dedup=60s&batch=1000``
Sink URL:   ``pubsub://project/topic?partitions=1``
Emulator: env ``PUBSUB_EMULATOR_HOST`` or ``?emulator=host:port``.

Source
    Pub/Sub has no replayable position, so the source never acks a message before the
    recovery store holds an epoch that covers it:

    * A background thread does the unary ``Pull`` calls (1 s deadline) without
      auto-ack, extends the ack deadline of every message it holds (``lease``, default
      60 s, renewed every third of it) and performs the acks. ``next_batch`` only drains
      its queue: it never waits.
    * Messages emitted between two ``snapshot()`` calls form one group; a group is acked in
      the ``ack_lag``-th snapshot after the one that recorded it (default 2). Bytewax
      writes an epoch's snapshots and commits the epoch right after the epoch closes, well
      within the next snapshot interval, so by then the group's epoch is committed: a
      crash can no longer resume before it. ``ack_lag=1`` is the minimum. This rests on
      Bytewax's observed behaviour, not on an API promise (a source is not told when an
      epoch is committed); a larger ``ack_lag`` widens the margin at the cost of longer
      leases.
    * Resume state ``{"pending": [message keys emitted, not yet acked],
      "acked": {message key: ack time}}`` (acked keys are kept ``dedup`` seconds, default
      60, at least ``lease``); a message key is ``<message id>@<publish time>``. After
      a crash, Pub/Sub redelivers the unacked messages: the ones in the resume state
      were already processed before the snapshot and are dropped (and acked); the
      others are processed. A redelivery of a key still in memory is dropped as well.
    * One partition per subscription (a redelivery may go to any puller, so the dedup set
      must be in one place). Ordering keys: messages are emitted in the order pulled, which
      Pub/Sub keeps per ordering key on subscriptions with message ordering enabled. Such
      a subscription holds back a key's next messages until the outstanding ones are
      acked, so with ordering the latency is about ``ack_lag + 1`` snapshot intervals.
    * ``idle_exit=5s``: end of data (``StopIteration``) after 5 s without a message (a
      resumed partition waits at least ``lease + 2s`` for its first message, the time
      the messages held by a crashed process take to come back).
      Messages of the last epochs stay unacked at the end (acking them before their epoch
      is committed could lose them): a later run with the same recovery store drops them.

Sink
    Publishes each record with attributes ``alert_id`` and ``flow_id``, ordering key = the
    record key (sensor id), and waits for every publish of a batch before returning.
    At-least-once: a replay after a crash publishes again; consumers dedup by ``alert_id``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from google.api_core import exceptions as gexc
from google.api_core.retry import Retry
from google.cloud import pubsub_v1

from connectors.base import ConnectorContext, OutRecord, RawRecord, SourceURL

__all__ = ["PubSubSource", "PubSubSink", "source_from_url", "sink_from_url"]

log = logging.getLogger(__name__)


def _transport_kwargs(emulator: str | None, kind: str) -> dict[str, Any]:
    """Client kwargs; ``emulator`` (host:port) overrides ``PUBSUB_EMULATOR_HOST``."""
    if not emulator:
        return {}
    import grpc

    channel = grpc.insecure_channel(emulator)
    if kind == "subscriber":
        from google.pubsub_v1.services.subscriber.transports.grpc import (
            SubscriberGrpcTransport,
        )

        return {"transport": SubscriberGrpcTransport(channel=channel)}
    from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport

    return {"transport": PublisherGrpcTransport(channel=channel)}


def subscriber_client(emulator: str | None = None) -> pubsub_v1.SubscriberClient:
    return pubsub_v1.SubscriberClient(**_transport_kwargs(emulator, "subscriber"))


def publisher_client(
    emulator: str | None = None, ordering: bool = True
) -> pubsub_v1.PublisherClient:
    opts = pubsub_v1.types.PublisherOptions(
        enable_message_ordering=ordering,
        retry=Retry(initial=0.1, maximum=2.0, timeout=20.0),
        timeout=10.0,
    )
    return pubsub_v1.PublisherClient(
        publisher_options=opts, **_transport_kwargs(emulator, "publisher")
    )


class _Msg(TypedDict):
    ack_id: str
    message_id: str
    dedup: str
    data: bytes
    ordering_key: str


def _dedup_key(msg: Any) -> str:
    """Message id plus publish time: a redelivery keeps both; the emulator, which starts
    numbering message ids from 1 again after a restart, gives new messages a new time.
    """
    t = msg.publish_time
    return f"{msg.message_id}@{t.timestamp():.6f}" if t else msg.message_id


class _Puller:
    """Background thread: pulls into a queue, keeps leases alive, sends acks."""

    def __init__(
        self, client: Any, subscription: str, batch: int, lease: float, max_outstanding: int
    ) -> None:
        self._client = client
        self._sub = subscription
        self._batch = batch
        self._lease = lease
        self._max = max_outstanding
        self.out: queue.SimpleQueue[_Msg] = queue.SimpleQueue()
        self._acks: queue.SimpleQueue[list[str]] = queue.SimpleQueue()
        self._leased: dict[str, float] = {}  # ack_id -> time received
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.errors = 0
        self._thread = threading.Thread(
            target=self._run, name=f"pubsub-pull:{subscription}", daemon=True
        )
        self._thread.start()

    def ack(self, ack_ids: list[str]) -> None:
        if ack_ids:
            self._acks.put(ack_ids)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    # -- thread ----------------------------------------------------------------------------
    def _send_acks(self) -> None:
        ids: list[str] = []
        while True:
            try:
                ids.extend(self._acks.get_nowait())
            except queue.Empty:
                break
        if not ids:
            return
        with self._lock:
            for a in ids:
                self._leased.pop(a, None)
        for i in range(0, len(ids), 1000):
            chunk = ids[i : i + 1000]
            try:
                self._client.acknowledge(
                    subscription=self._sub, ack_ids=chunk, timeout=10, retry=None
                )
            except gexc.GoogleAPICallError as exc:
                # Expired/unknown ack ids (e.g. after an emulator restart): the message comes
                # back and is dropped as a duplicate, then acked again.
                log.warning("pubsub %s: ack of %d failed: %s", self._sub, len(chunk), exc)

    def _extend(self, ack_ids: list[str]) -> None:
        for i in range(0, len(ack_ids), 1000):
            try:
                self._client.modify_ack_deadline(
                    subscription=self._sub,
                    ack_ids=ack_ids[i : i + 1000],
                    ack_deadline_seconds=int(self._lease),
                    timeout=10,
                    retry=None,
                )
            except gexc.GoogleAPICallError as exc:
                log.warning("pubsub %s: lease extension failed: %s", self._sub, exc)

    def _run(self) -> None:
        last_extend = time.monotonic()
        delay = 0.1
        while not self._stop.is_set():
            self._send_acks()
            now = time.monotonic()
            if now - last_extend > self._lease / 3:
                with self._lock:
                    held = list(self._leased)
                self._extend(held)
                last_extend = now
            with self._lock:
                full = len(self._leased) >= self._max
            if full:
                time.sleep(0.05)
                continue
            try:
                resp = self._client.pull(
                    subscription=self._sub, max_messages=self._batch, timeout=1.0, retry=None
                )
            except gexc.DeadlineExceeded:
                continue
            except (gexc.GoogleAPICallError, gexc.RetryError) as exc:
                self.errors += 1
                log.warning(
                    "pubsub %s: pull failed (%s); retrying in %.1fs",
                    self._sub,
                    type(exc).__name__,
                    delay,
                )
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
                continue
            delay = 0.1
            msgs = resp.received_messages
            if not msgs:
                continue
            got = [m.ack_id for m in msgs]
            with self._lock:
                for a in got:
                    self._leased[a] = now
            self._extend(got)  # the subscription's own deadline may be only 10 s
            for m in msgs:
                self.out.put(
                    {
                        "ack_id": m.ack_id,
                        "message_id": m.message.message_id,
                        "dedup": _dedup_key(m.message),
                        "data": bytes(m.message.data),
                        "ordering_key": m.message.ordering_key,
                    }
                )


class PubSubState(TypedDict):
    pending: list[str]
    acked: dict[str, float]


class _PubSubPartition(StatefulSourcePartition[list[RawRecord], PubSubState]):
    def __init__(
        self,
        puller: _Puller,
        name: str,
        state: PubSubState | None,
        *,
        batch: int,
        ack_lag: int,
        dedup: float,
        idle_exit: float | None,
        lease: float,
    ) -> None:
        self._puller = puller
        self._name = name
        self._source = f"pubsub:{name}"
        self._batch = batch
        self._ack_lag = max(1, ack_lag)
        self._dedup = dedup
        self._idle_exit = idle_exit
        if idle_exit is not None and state is not None:
            # After a crash the messages the dead process held come back only when their
            # lease lapses: do not call the subscription idle before that.
            self._first_idle: float | None = max(idle_exit, lease + 2.0)
        else:
            self._first_idle = idle_exit
        now = time.time()
        # message id -> ack time (acked) / None (emitted, ack pending)
        self._seen: dict[str, float | None] = {}
        if state is not None:
            for mid in state["pending"]:
                # Processed before the resume snapshot (its epoch is committed now) and not
                # acked: it comes back within a lease; keep it a lease longer than the rest.
                self._seen[mid] = now + lease
            self._seen.update(state["acked"])
        self._group: list[tuple[str, str]] = []  # (message id, ack id) since last snapshot
        self._groups: deque[list[tuple[str, str]]] = deque()
        self._last_msg = time.monotonic()
        self._awake: datetime | None = None
        self.dropped = 0  # redeliveries dropped as duplicates; for tests and metrics
        self.received = 0  # messages taken from the puller (duplicates included)

    def next_batch(self) -> list[list[RawRecord]]:
        batch: list[RawRecord] = []
        got = 0
        while got < self._batch:
            try:
                m = self._puller.out.get_nowait()
            except queue.Empty:
                break
            got += 1
            mid = m["dedup"]
            self._group.append((mid, m["ack_id"]))
            if mid in self._seen:
                self.dropped += 1
                continue
            self._seen[mid] = None
            key = m["ordering_key"].encode() if m["ordering_key"] else None
            batch.append(RawRecord(m["data"], self._source, self._name, m["message_id"], key))
        now = time.monotonic()
        if got:
            self.received += got
            self._last_msg = now
            self._awake = None
        else:
            limit = self._idle_exit if self.received else self._first_idle
            if limit is not None and now - self._last_msg > limit:
                raise StopIteration
            self._awake = datetime.now(UTC) + timedelta(milliseconds=10)
        return [batch] if batch else []

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> PubSubState:
        self._groups.append(self._group)
        self._group = []
        now = time.time()
        while len(self._groups) > self._ack_lag:
            done = self._groups.popleft()
            for mid, _ in done:
                self._seen[mid] = now
            self._puller.ack([a for _, a in done])
        cutoff = now - self._dedup
        self._seen = {k: t for k, t in self._seen.items() if t is None or t >= cutoff}
        return {
            "pending": [k for k, t in self._seen.items() if t is None],
            "acked": {k: t for k, t in self._seen.items() if t is not None},
        }

    def close(self) -> None:
        self._puller.stop()


class PubSubSource(FixedPartitionedSource[list[RawRecord], PubSubState]):
    """Read one Pub/Sub subscription (one partition), emitting batches of `RawRecord`.

    ``RawRecord.offset`` is the message id, ``key`` the ordering key. Resume state:
    ``{"pending": [message keys], "acked": {message key: time}}`` (see module docstring).

    Args:
        project: the Google Cloud project.
        subscription: the subscription read.
        emulator: ``host:port`` of a Pub/Sub emulator (``None``: ``PUBSUB_EMULATOR_HOST`` or
            the real service).
        batch: the most messages per pull.
        ack_lag: a group of messages is acked in the ``ack_lag``-th snapshot after the one
            that recorded it (at least 1).
        dedup: seconds acked message keys are kept to drop redeliveries.
        lease: the ack deadline the source keeps extending, in seconds.
        idle_exit: end of data after this many seconds without a message (``None``: never).
        max_outstanding: the most pulled messages held before pulling pauses.
    """

    def __init__(
        self,
        project: str,
        subscription: str,
        *,
        emulator: str | None = None,
        batch: int = 1000,
        ack_lag: int = 2,
        dedup: float = 60.0,
        lease: float = 60.0,
        idle_exit: float | None = None,
        max_outstanding: int = 20000,
    ) -> None:
        self._path = f"projects/{project}/subscriptions/{subscription}"
        self._name = subscription
        self._emulator = emulator
        self._batch = batch
        self._ack_lag = ack_lag
        self._lease = min(max(lease, 10.0), 600.0)
        self._dedup = max(dedup, self._lease)
        self._idle_exit = idle_exit
        self._max = max_outstanding

    def list_parts(self) -> list[str]:
        """One partition: the subscription."""
        return [self._name]

    def build_part(
        self, step_id: str, for_part: str, resume_state: PubSubState | None
    ) -> _PubSubPartition:
        """A puller of the subscription, resumed from the saved state."""
        puller = _Puller(
            subscriber_client(self._emulator), self._path, self._batch, self._lease, self._max
        )
        return _PubSubPartition(
            puller,
            self._name,
            resume_state,
            batch=self._batch,
            ack_lag=self._ack_lag,
            dedup=self._dedup,
            idle_exit=self._idle_exit,
            lease=self._lease,
        )


class _PubSubSinkPartition(StatefulSinkPartition[OutRecord, None]):
    def __init__(
        self, client: pubsub_v1.PublisherClient, topic: str, flow_id: str, retry_for: float
    ) -> None:
        self._client = client
        self._topic = topic
        self._flow_id = flow_id
        self._retry_for = retry_for
        self.published = 0  # for tests and metrics

    def _publish(self, rec: OutRecord) -> Any:
        return self._client.publish(
            self._topic, rec.value, ordering_key=rec.key, alert_id=rec.id, flow_id=self._flow_id
        )

    def write_batch(self, values: list[OutRecord]) -> None:
        deadline = time.monotonic() + self._retry_for
        todo = values
        delay = 0.1
        while todo:
            futures = [(rec, self._publish(rec)) for rec in todo]
            failed: list[OutRecord] = []
            for rec, fut in futures:
                try:
                    fut.result(timeout=max(1.0, deadline - time.monotonic()))
                    self.published += 1
                except Exception as exc:  # noqa: BLE001 - any publish failure is retried
                    failed.append(rec)
                    last = exc
            if not failed:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"pubsub sink {self._topic}: {len(failed)} messages "
                    f"unpublished after {self._retry_for}s: {last}"
                )
            log.warning(
                "pubsub sink %s: %d publishes failed (%s); retrying", self._topic, len(failed), last
            )
            # An ordering key pauses after a failure until resumed.
            for key in {r.key for r in failed}:
                self._client.resume_publish(self._topic, key)
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            todo = failed

    def snapshot(self) -> None:
        # write_batch returns after the server acknowledged every publish.
        return None


class PubSubSink(FixedPartitionedSink[OutRecord, None]):
    """Publish records to a topic; attribute ``alert_id``, ordering key = record key.

    At-least-once. Resume state: none.

    Args:
        project: the Google Cloud project.
        topic: the topic published to.
        flow_id: the flow's identity (the ``flow_id`` attribute of each message).
        emulator: ``host:port`` of a Pub/Sub emulator (``None``: ``PUBSUB_EMULATOR_HOST`` or
            the real service).
        partitions: how many Bytewax partitions publish.
        retry_for: seconds to keep retrying a failed publish before the flow fails.
    """

    def __init__(
        self,
        project: str,
        topic: str,
        flow_id: str,
        *,
        emulator: str | None = None,
        partitions: int = 1,
        retry_for: float = 120.0,
    ) -> None:
        self._topic = f"projects/{project}/topics/{topic}"
        self._flow_id = flow_id
        self._emulator = emulator
        self._parts = partitions
        self._retry_for = retry_for

    def list_parts(self) -> list[str]:
        """The configured number of publisher partitions."""
        return [str(i) for i in range(self._parts)]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _PubSubSinkPartition:
        """A publisher partition with its own client."""
        return _PubSubSinkPartition(
            publisher_client(self._emulator), self._topic, self._flow_id, self._retry_for
        )


def _project_and_name(url: SourceURL, what: str) -> tuple[str, str]:
    parts = [p for p in url.path.strip("/").split("/") if p]
    if len(parts) != 2:
        raise ValueError(
            f"a pubsub URL is pubsub://project/{what}: {url.raw!r}; e.g. pubsub://my-project/{what}"
        )
    return parts[0], parts[1]


def _emulator(url: SourceURL) -> str | None:
    # Without ?emulator= the client libraries read PUBSUB_EMULATOR_HOST themselves.
    return url.param("emulator") or None


def source_from_url(url: SourceURL, ctx: ConnectorContext) -> PubSubSource:
    """``pubsub://project/subscription?idle_exit=5s&ack_lag=2&dedup=60s&batch=1000``."""
    project, sub = _project_and_name(url, "subscription")
    idle = url.param("idle_exit")
    return PubSubSource(
        project,
        sub,
        emulator=_emulator(url),
        batch=url.int("batch", 1000, minimum=1),
        ack_lag=url.int("ack_lag", 2),
        dedup=url.duration("dedup", "60s"),
        lease=url.duration("lease", "60s"),
        idle_exit=url.duration("idle_exit", 0.0) if idle else None,
    )


def sink_from_url(url: SourceURL, ctx: ConnectorContext) -> PubSubSink:
    """``pubsub://project/topic?partitions=1``."""
    project, topic = _project_and_name(url, "topic")
    return PubSubSink(
        project,
        topic,
        ctx.flow_id,
        emulator=_emulator(url),
        partitions=url.int("partitions", 1, minimum=1),
    )
