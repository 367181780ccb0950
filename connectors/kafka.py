"""Kafka: a batch source with offsets in the snapshot, and an exactly-once sink.

URLs: ``kafka://host:port/topic1,topic2?tail=false&start=earliest&batch=2000`` as a
source; ``kafka://host:port/topic?partitions=4`` as a sink. Client settings (SASL,
SSL, ...) pass through from :attr:`Settings.kafka` to every consumer and producer.

Exactly-once sink, the argument in short (README, "Exactly-once"):

1. Each output partition is a Bytewax sink partition owning one transactional producer
   with a stable ``transactional.id`` (flow id, step, topic, partition). Its
   ``init_transactions`` on (re)start fences any zombie and aborts its open transaction.
2. Writes of an epoch go into one open transaction; ``snapshot()`` commits it, then
   returns the offset that the partition's next write will come after. Bytewax calls
   ``snapshot()`` after every write of that epoch and before any write of the next.
3. On resume from epoch E, Bytewax replays the input after E's source offsets. The
   transactions committed after E's snapshot are exactly the records after E's sink
   offset: the partition reads them back (``read_committed``) and skips replayed records
   whose ``id`` it finds there. Since the flow is deterministic, the replay produces
   those same ids, so the committed output has each id once.
"""

from __future__ import annotations

import contextlib
import logging
import time
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition
from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic
from prometheus_client import Gauge, Histogram

from connectors import placement
from connectors.base import (
    ConnectorContext,
    MessageBatch,
    OutRecord,
    RawRecord,
    SourceURL,
    register_message_type,
)
from connectors.kafka_keys import Homes, partitioner_named

__all__ = [
    "KafkaSource",
    "ExactlyOnceKafkaSink",
    "client_config",
    "ensure_topic",
    "source_from_url",
    "sink_from_url",
]

#: Prometheus metrics of the Kafka connector (served by the flow's metrics server).
INPUT_LAG = Gauge("ad_input_lag", "Records behind the end of the input partition", ["partition"])
CHECKPOINT_SECONDS = Histogram(
    "ad_checkpoint_duration_seconds", "Time for a sink snapshot (flush + commit)", ["sink"]
)
LAST_CHECKPOINT = Gauge("ad_last_checkpoint_timestamp_seconds", "Unix time of the last sink commit")

log = logging.getLogger(__name__)


def _message_to_raw(m: Message) -> RawRecord:
    """A consumed message as a RawRecord (made only when one is needed, see MessageBatch)."""
    topic: str = m.topic()  # type: ignore[assignment]  # set on every consumed record
    return tuple.__new__(
        RawRecord, (m.value(), "kafka:" + topic, str(m.partition()), str(m.offset()), m.key())
    )


register_message_type(Message, _message_to_raw)
ID_HEADER = "ad-id"
_IDLE = timedelta(milliseconds=5)


def client_config(brokers: str, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """Base librdkafka config plus pass-through settings (security etc.)."""
    conf: dict[str, Any] = {"bootstrap.servers": brokers}
    conf.update(extra or {})
    return conf


def _topic_partitions(brokers: str, topic: str, extra: dict[str, str] | None) -> list[int]:
    admin = AdminClient(client_config(brokers, extra))
    md = admin.list_topics(timeout=30)  # all topics: asking for one may auto-create it
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        err = t.error if t is not None else "not found"
        raise RuntimeError(f"Kafka topic {topic!r} on {brokers} is not available: {err}")
    return sorted(t.partitions)


def ensure_topic(
    brokers: str, topic: str, partitions: int, extra: dict[str, str] | None = None
) -> None:
    """Create ``topic`` with ``partitions`` partitions if it does not exist."""
    admin = AdminClient(client_config(brokers, extra))
    md = admin.list_topics(timeout=30)
    if topic in md.topics and not md.topics[topic].error:
        return
    fut = admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)[topic]
    try:
        fut.result()
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        t = admin.list_topics(topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return
        time.sleep(0.1)


class _KafkaSourcePartition(StatefulSourcePartition[MessageBatch, tuple[int, str]]):
    def __init__(
        self,
        conf: dict[str, Any],
        topic: str,
        part: int,
        start: int,
        resume_state: tuple[int, str] | int | None,
        tail: bool,
        batch_size: int,
        group: str,
        max_rate: float = 0.0,
        homes: Homes | None = None,
        linger_s: float = 0.0,
    ) -> None:
        self._consumer = Consumer(conf)
        low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, part), timeout=30)
        if isinstance(resume_state, int):  # written by versions before key-group names
            resume_state = (resume_state, group)
        if resume_state is not None:
            self._offset, self._group = resume_state
        else:  # resolve the logical start now, so the first snapshot is a real offset
            self._offset = low if start == OFFSET_BEGINNING else high
            self._group = group
        placement.note_reader(self._group)
        self._consumer.assign([TopicPartition(topic, part, self._offset)])
        self._topic = topic
        self._part = part
        self._source = f"kafka:{topic}"
        self._batch = batch_size
        self._rate = max_rate  # records/s for this partition; 0 = unlimited
        self._awake: datetime | None = None
        # tail=False: the end of the data available now; stop once it has been read
        self._stop_at: int | None = None if tail else high
        self._lag = INPUT_LAG.labels(f"{topic}/{part}")
        self._homes = homes
        self._linger = linger_s
        self._held: list[Message] = []  # a small poll held back by the linger
        self._held_at = 0.0

    def next_batch(self) -> list[MessageBatch]:
        msgs = self._consumer.consume(self._batch - len(self._held), 0.0)
        if self._linger:
            msgs = self._lingered(msgs)
        out = [m for m in msgs if m.error() is None]
        if len(out) == len(msgs):  # the common case: no error or end-of-partition event
            if out:
                self._offset = out[-1].offset() + 1  # type: ignore[operator]  # set on records
        else:
            out = self._with_errors(msgs)
        if self._stop_at is not None and not out and self._offset >= self._stop_at:
            raise StopIteration
        if not out:
            wait = _IDLE if not self._held else timedelta(seconds=self._linger / 4)
            self._awake = datetime.now(UTC) + wait
        elif self._rate:  # throttled (backfills that must not flood the sinks)
            self._awake = datetime.now(UTC) + timedelta(seconds=len(out) / self._rate)
        else:
            self._awake = None
        if out:
            _low, high = self._consumer.get_watermark_offsets(
                TopicPartition(self._topic, self._part), cached=True
            )
            if high is not None and high >= 0:
                self._lag.set(max(0, high - self._offset))
            values = [m.value() for m in out]
            return [MessageBatch(values, out, self._source, self._group, self._homes)]
        return []

    def _lingered(self, msgs: list[Message]) -> list[Message]:
        """``msgs`` held back while the batch is small and the oldest record held has
        waited less than the linger: a live stream's small polls become fewer, larger
        batches (each batch has a fixed cost in every step downstream). Never blocks:
        a held batch is released by a later call (``next_awake`` asks for one in time).
        """
        held = self._held
        if held:
            held.extend(msgs)
            msgs = held
        elif not msgs:
            return msgs
        else:
            self._held_at = time.monotonic()
        if len(msgs) >= self._batch // 2 or time.monotonic() - self._held_at >= self._linger:
            self._held = []
            return msgs
        if msgs is not held:
            self._held = list(msgs)
        if self._stop_at is not None and (msgs[-1].offset() or 0) + 1 >= self._stop_at:
            self._held = []  # the end of a bounded read: nothing more will come
            return msgs
        return []

    def _with_errors(self, msgs: list[Message]) -> list[Message]:
        """The records of a consume that also returned errors or end-of-partition events,
        with the resume offset kept right around them.
        """
        out: list[Message] = []
        last = -1  # offset of the last record kept and not yet in self._offset
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if last >= 0:
                    self._offset = last + 1
                    last = -1
                if err.code() == KafkaError._PARTITION_EOF:
                    eof = msg.offset()
                    if eof is not None and eof > self._offset:
                        self._offset = eof
                    continue
                if err.retriable() or err.code() in (
                    KafkaError._TRANSPORT,
                    KafkaError._ALL_BROKERS_DOWN,
                ):
                    log.warning("kafka source %s/%s: %s", self._topic, self._part, err)
                    continue
                raise RuntimeError(f"error consuming Kafka {self._topic}/{self._part}: {err}")
            last = msg.offset()  # type: ignore[assignment]  # set on records
            out.append(msg)
        if last >= 0:
            self._offset = last + 1
        return out

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, str]:
        return (self._offset, self._group)

    def close(self) -> None:
        self._consumer.close()


class KafkaSource(FixedPartitionedSource[MessageBatch, tuple[int, str]]):
    """Read topics in batches; one Bytewax partition per Kafka partition.

    Resume state: ``(offset, group)``: the offset of the next record to read in that
    partition, and the key-group name of the partition
    (:func:`connectors.placement.partition_group`, fixed when the partition is first
    read, so it survives rescaling and added partitions). A bare ``int`` offset (the
    state format before key groups by partition) is read too. Offsets live only in
    Bytewax snapshots; nothing is committed to Kafka.
    Emits one item per poll: a :class:`MessageBatch` (up to ``batch_size`` records; it
    iterates as RawRecords; ``group`` is the partition's key-group name).
    With ``tail=False`` each partition stops at the end offset it had when the
    partition was built; ``max_rate`` (``?max_rate=`` records/s per partition) paces
    reads, e.g. for a backfill that must not flood the sinks. Reads ``read_committed``
    (records of aborted transactions are never seen). A poll smaller than half a batch
    is held (up to ``linger_s``) for the next polls to join it; held records are not yet
    emitted, so the offset a snapshot saves is before them and a resumed partition
    reads them again. Every batch carries the source's
    :class:`~connectors.kafka_keys.Homes` (each sensor's home key group, computed from
    the first topic with the producers' ``partitioner``).

    Args:
        brokers: the bootstrap servers (``host:port``).
        topics: the topics to read.
        tail: keep reading new records (``False``: stop at the end offsets of the start).
        start: where a partition without resume state starts: ``earliest`` or ``latest``.
        batch_size: the most records per emitted batch.
        max_rate: records per second per partition (``0``: unpaced).
        extra: librdkafka settings for the consumer (``AD_KAFKA_*``).
        partitioner: the producers' partitioner (:data:`connectors.kafka_keys.PARTITIONERS`).
        linger_s: the longest a small poll is held for more (``0``: never).
    """

    def __init__(
        self,
        brokers: str,
        topics: list[str],
        *,
        tail: bool = True,
        start: str = "earliest",
        batch_size: int = 2000,
        max_rate: float = 0.0,
        extra: dict[str, str] | None = None,
        partitioner: str = "murmur2",
        linger_s: float = 0.0,
    ) -> None:
        if not topics:
            raise ValueError("KafkaSource needs at least one topic, e.g. kafka://host:9092/sensors")
        self._brokers = brokers
        self._topics = topics
        self._tail = tail
        self._start = OFFSET_BEGINNING if start == "earliest" else OFFSET_END
        self._batch = batch_size
        self._rate = max_rate
        self._extra = dict(extra or {})
        self._parts: list[str] | None = None
        partitioner_named(partitioner)  # a bad name fails here, with the valid ones
        self._partitioner = partitioner
        self._homes: Homes | None = None
        self._linger = linger_s

    def list_parts(self) -> list[str]:
        """One partition per ``topic#partition`` of the configured topics."""
        return [
            f"{t}#{p}"
            for t in self._topics
            for p in _topic_partitions(self._brokers, t, self._extra)
        ]

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, str] | int | None
    ) -> _KafkaSourcePartition:
        """A consumer of one topic partition, resumed at the saved offset."""
        topic, part = for_part.rsplit("#", 1)
        if self._parts is None:
            self._parts = self.list_parts()
        group = placement.partition_group(for_part, placement.part_rank(for_part, self._parts))
        if isinstance(resume_state, tuple) and resume_state[1] != group:
            log.warning(
                "kafka source %s: the input's partitions or topics changed since the "
                "state was made (its key group %s is now named %s): with AD_KEY_BY=auto "
                "sensors whose home partition moved start a new state",
                for_part,
                resume_state[1],
                group,
            )
        if self._homes is None:
            self._homes = Homes(self._topics[0], self._parts, self._partitioner)
        conf = client_config(
            self._brokers,
            {
                "group.id": "BYTEWAX_IGNORED",
                "enable.auto.commit": "false",
                "enable.partition.eof": "true",
                "isolation.level": "read_committed",
                "fetch.wait.max.ms": "50",
                "queued.min.messages": "20000",
                # once a partition's queue passes queued.min.messages, librdkafka pauses its
                # fetching for fetch.queue.backoff.ms (default 1000): with the default a
                # partition reads ~25k records/s at most; 10 ms keeps the queue bound and
                # refills it as soon as it drains (benchmarks/RESULTS.md)
                "fetch.queue.backoff.ms": "10",
                **self._extra,
            },
        )
        return _KafkaSourcePartition(
            conf,
            topic,
            int(part),
            self._start,
            resume_state,
            self._tail,
            self._batch,
            group,
            self._rate,
            self._homes,
            self._linger,
        )


class _TxnSinkPartition(StatefulSinkPartition[OutRecord, int]):
    def __init__(
        self,
        brokers: str,
        extra: dict[str, str],
        topic: str,
        part: int,
        txn_id: str,
        resume_state: int | None,
        step: str,
    ) -> None:
        self._topic = topic
        self._part = part
        self._step = step
        self._producer = Producer(
            client_config(
                brokers,
                {
                    "transactional.id": txn_id,
                    "transaction.timeout.ms": "60000",
                    "linger.ms": "5",
                    "compression.type": "lz4",
                    **extra,
                },
            )
        )
        self._connect(topic)
        self._producer.init_transactions(60)  # fences zombies, aborts their open txn
        self._in_txn = False
        self._delivered = -1
        self._errors: list[str] = []
        self._skip, self._offset = self._read_back(brokers, extra, resume_state)

    def _connect(self, topic: str) -> None:
        """Have a broker connection up before ``init_transactions``. Its coordinator
        lookup finds no broker while the client swaps its bootstrap connection for the
        brokers it learned, and librdkafka retries it only after its 500 ms
        coordinator-query interval. Two metadata requests: the first learns the brokers,
        the second is answered over a learned broker's connection.

        Why it matters: a stall in one process's sink start-up delays that worker's epoch
        move, and Bytewax's per-worker epoch clocks then keep its epochs out of step with
        the other processes' for the rest of the run; the early ones wait for it every
        epoch. An unreachable cluster is reported by ``init_transactions``, not here.
        """
        with contextlib.suppress(KafkaException):
            for _ in range(2):
                self._producer.list_topics(topic, timeout=10)

    def _read_back(
        self, brokers: str, extra: dict[str, str], resume_state: int | None
    ) -> tuple[set[str], int]:
        """Ids committed after ``resume_state`` (all of them when never snapshotted)."""
        c = Consumer(
            client_config(
                brokers,
                {
                    "group.id": "BYTEWAX_IGNORED",
                    "enable.auto.commit": "false",
                    "isolation.level": "read_committed",
                    "enable.partition.eof": "true",
                    **extra,
                },
            )
        )
        tp = TopicPartition(self._topic, self._part)
        low, high = c.get_watermark_offsets(tp, timeout=30)
        start = low if resume_state is None else max(resume_state, low)
        ids: set[str] = set()
        if start < high:
            c.assign([TopicPartition(self._topic, self._part, start)])
            done = False
            while not done:
                for msg in c.consume(5000, 1.0):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            done = True
                            continue
                        raise RuntimeError(f"read-back of {self._topic}/{self._part}: {err}")
                    for k, v in msg.headers() or ():  # type: ignore[str-unpack]  # (key, value) pairs
                        if k == ID_HEADER:
                            ids.add(v.decode())  # type: ignore[union-attr]  # our header: bytes
                    if msg.offset() + 1 >= high:  # type: ignore[operator]  # set on records
                        done = True
        c.close()
        if ids:
            log.info(
                "sink %s/%s resumes after offset %s: %d committed ids to skip",
                self._topic,
                self._part,
                start,
                len(ids),
            )
        return ids, high

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))
        elif msg.offset() > self._delivered:
            self._delivered = msg.offset()

    def write_batch(self, values: list[OutRecord]) -> None:
        if not self._in_txn:
            self._producer.begin_transaction()
            self._in_txn = True
        skip = self._skip
        produce = self._producer.produce
        for rec in values:
            if skip and rec.id in skip:
                continue
            while True:
                try:
                    produce(
                        self._topic,
                        rec.value,
                        rec.key.encode(),
                        partition=self._part,
                        headers=[(ID_HEADER, rec.id.encode())],
                        on_delivery=self._on_delivery,
                    )
                    break
                except BufferError:
                    self._producer.poll(0.05)
        self._producer.poll(0)

    def snapshot(self) -> int:
        if self._in_txn:
            t0 = time.perf_counter()
            self._commit()
            CHECKPOINT_SECONDS.labels(self._step).observe(time.perf_counter() - t0)
            LAST_CHECKPOINT.set(time.time())
        return self._offset

    def _commit(self) -> None:
        while True:
            try:
                self._producer.commit_transaction(60)
                break
            except KafkaException as exc:
                err = exc.args[0]
                if err.retriable():
                    log.warning("commit of %s/%s retrying: %s", self._topic, self._part, err)
                    time.sleep(0.5)
                    continue
                # abortable or fatal: this epoch's output cannot be committed; crash so
                # the restart replays it from the last snapshot (nothing is lost)
                raise RuntimeError(
                    f"transaction on {self._topic}/{self._part} failed: {err}"
                ) from exc
        if self._errors:
            raise RuntimeError(f"delivery to {self._topic}/{self._part} failed: {self._errors}")
        self._in_txn = False
        if self._delivered >= 0:
            self._offset = max(self._offset, self._delivered + 1)

    def close(self) -> None:
        if self._in_txn:
            self._commit()
        self._producer.flush(30)


class ExactlyOnceKafkaSink(FixedPartitionedSink[OutRecord, int]):
    """Write ``(key, OutRecord)`` pairs to a topic in transactions, exactly once.

    One Bytewax partition per topic partition; ``part_fn`` is crc32 of the key, so a
    key always lands in the same partition. Resume state: the topic offset after the
    last record committed before that snapshot (an ``int``); on resume the partition
    reads the committed records after it and skips replayed records with those ids.
    Each record carries its id in the ``ad-id`` header and its key as the Kafka key.

    Args:
        brokers: the bootstrap servers (``host:port``).
        topic: the topic written (created with ``partitions`` partitions if missing).
        flow_id: the flow's identity: the prefix of the transactional ids.
        partitions: the topic's partition count when the sink creates it.
        extra: librdkafka settings for the producer (``AD_KAFKA_*``).
    """

    def __init__(
        self,
        brokers: str,
        topic: str,
        flow_id: str,
        *,
        partitions: int = 4,
        extra: dict[str, str] | None = None,
    ) -> None:
        self._brokers = brokers
        self._topic = topic
        self._flow_id = flow_id
        self._partitions = partitions
        self._extra = dict(extra or {})

    def list_parts(self) -> list[str]:
        """One partition per partition of the output topic (created if missing)."""
        ensure_topic(self._brokers, self._topic, self._partitions, self._extra)
        return [f"{p:05d}" for p in _topic_partitions(self._brokers, self._topic, self._extra)]

    def part_fn(self, item_key: str) -> int:
        """Spread keys over partitions by CRC32 of the key."""
        return zlib.crc32(item_key.encode())

    def build_part(
        self, step_id: str, for_part: str, resume_state: int | None
    ) -> _TxnSinkPartition:
        """A transactional producer for one output partition."""
        part = int(for_part)
        txn_id = f"{self._flow_id}.{step_id}.{self._topic}.{part}"
        return _TxnSinkPartition(
            self._brokers, self._extra, self._topic, part, txn_id, resume_state, step_id
        )


def check_reachable(url: SourceURL, ctx: ConnectorContext, role: str) -> None:
    """Fail at start-up, within ``?connect_timeout=`` (default 10 s; ``0s``: no check),
    when no broker of ``url`` answers: one line naming the URL (secrets redacted) and
    what to check.
    """
    timeout = url.duration("connect_timeout", "10s")
    if not timeout:  # connect_timeout=0s: no check
        return
    try:
        conf = {**client_config(url.hostport, dict(ctx.kafka)), "log_level": 0}
        AdminClient(conf).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ValueError(
            f"cannot reach Kafka for the {role} {url.redacted} within {timeout:g} s "
            f"({exc.args[0].str() if exc.args else exc}); is the broker running and "
            "host:port right? e.g. kafka://127.0.0.1:9092/alerts"
        ) from None


def source_from_url(url: SourceURL, ctx: ConnectorContext) -> KafkaSource:
    """``kafka://host:port/topic[,topic]?tail=&start=&batch=&max_rate=&connect_timeout=``."""
    check_reachable(url, ctx, "source")
    return KafkaSource(
        url.hostport,
        url.names,
        tail=url.bool("tail", True),
        start=url.text("start", "earliest"),
        batch_size=url.int("batch", 2000, minimum=1),
        max_rate=url.float("max_rate", 0.0),
        extra=dict(ctx.kafka),
        partitioner=url.text("partitioner", "murmur2"),
        linger_s=url.duration("linger", "20ms"),
    )


def sink_from_url(url: SourceURL, ctx: ConnectorContext) -> ExactlyOnceKafkaSink:
    """``kafka://host:port/topic?partitions=&connect_timeout=`` (transactional)."""
    if len(url.names) != 1:
        raise ValueError(
            f"a Kafka sink URL names one topic, e.g. kafka://host:9092/alerts; got {url.redacted}"
        )
    check_reachable(url, ctx, "sink")
    return ExactlyOnceKafkaSink(
        url.hostport,
        url.names[0],
        ctx.flow_id,
        partitions=url.int("partitions", 4, minimum=1),
        extra=dict(ctx.kafka),
    )
