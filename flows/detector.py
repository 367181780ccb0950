"""The detector dataflow: ``python -m bytewax.run flows.detector``.

read -> decode (per batch) -> group by key group -> detect (windows + detector, per
sensor) -> alerts sink; bad records and late data -> dead-letter sink. Configured by
``AD_*`` variables / ``AD_CONFIG`` (flows.settings); with none it runs the demo.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import sys
from collections.abc import Iterable
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.operators import StatefulBatchLogic

from connectors import make_sink, make_source
from connectors.base import MessageBatch, OutRecord, RawRecord, as_raw
from flows import dogstatsd, metrics, summary
from flows.decode import Decoder, decoder_for
from flows.logic import ALERT, DLQ, KeyGroupLogic
from flows.models import Models
from flows.quotas import TenantGate, alert_routes, dead_letter_routes
from flows.settings import Settings, SettingsError, load_settings
from state.snapshots import resolve_snapshot_dir
from state.tenants import Registry, RegistryError, load_registry

__all__ = ["build_flow"]

log = logging.getLogger(__name__)


class _Detect(KeyGroupLogic, StatefulBatchLogic):
    """KeyGroupLogic as a Bytewax ``StatefulBatchLogic``."""


class _Gate(TenantGate, StatefulBatchLogic):
    """TenantGate (per input partition) as a Bytewax ``StatefulBatchLogic``."""


def _batch_decoder(settings: Settings) -> Any:
    """``decode(decoder, batch, gate)``: one input batch -> (key group, SubBatch of
    columns) items + dead letters (``gate``: flows.quotas, or None).
    """
    groups = settings.key_groups
    by_partition = settings.key_by == "partition"
    auto = settings.key_by == "auto"
    cache: dict[str, str] = {}
    locality = _Locality()

    def decode(decoder: Decoder, batch: list[RawRecord] | MessageBatch, gate: Any) -> list:
        parts, bad = decoder.decode_grouped(batch, groups, cache, by_partition, auto, gate)
        if len(batch):
            if type(batch) is MessageBatch:
                src, last = batch.source, batch.items[-1]
                if auto and batch.homes is not None:
                    locality.count(len(batch) - len(bad), decoder)
            else:
                src, last = batch[0].source, batch[-1]  # type: ignore[index]  # a list here
            metrics.RECORDS_IN.labels(src).inc(len(batch))
            if by_partition:
                _check_keyed(as_raw(last))
        out: list[tuple[str, Any]] = []
        tags = iter(gate.tags) if gate is not None and gate.tags else None
        for b in bad:
            reason = rec_reason(b[1])
            if reason not in _COUNTED:  # quota dead letters: counted with their tenant
                metrics.DEAD_LETTERS.labels(reason, "").inc()
                out.append((DLQ, b))
            else:  # to the tenant's dead-letter sink, if it has one
                out.append((next(tags) if tags is not None else DLQ, b))
        if tags is not None:
            gate.tags.clear()
        out.extend(parts.items())
        return out

    return decode


class _Locality:
    """Counts where readings arrive with ``AD_KEY_BY=auto`` (``ad_key_locality_readings_total``)
    and says once, with the reason, when many cross to another worker.
    """

    def __init__(self) -> None:
        self._home = metrics.KEY_LOCALITY.labels("home", "keyed")
        self._seen = 0
        self._away = 0
        self._warned = False

    def count(self, readings: int, decoder: Decoder) -> None:
        """Count one batch's ``readings``, of which ``decoder.away`` arrived away."""
        away = decoder.away
        self._home.inc(readings - away)
        self._seen += readings
        if not away or decoder.away_sample is None:
            return
        raw, sensor = decoder.away_sample
        if raw.key is None:
            why = "unkeyed"
        elif raw.key != sensor.encode():
            why = "other_key"
        else:
            why = "other_partition"
        metrics.KEY_LOCALITY.labels("away", why).inc(away)
        self._away += away
        if not self._warned and self._seen >= 10_000 and self._away * 10 >= self._seen:
            self._warned = True
            log.warning(
                "%d of %d readings so far arrived away from their sensor's home "
                "partition (e.g. %s/%s: %s) and cross between workers; output is "
                "the same, but for locality key Kafka records by sensor_id with "
                "the partitioner named by the source URL's ?partitioner= (murmur2, "
                "Kafka's default; crc32, librdkafka's)",
                self._away,
                self._seen,
                raw.source,
                raw.partition,
                why,
            )


#: dead-letter reasons counted where they are decided (flows.quotas)
_COUNTED = frozenset({"quota_exceeded", "sensor_quota"})


def _decode_step(settings: Settings, registry: Registry | None = None) -> Any:
    decoder = decoder_for(settings, registry)
    decode = _batch_decoder(settings)

    def decode_one_batch(batch: list[RawRecord] | MessageBatch) -> Iterable[tuple[str, Any]]:
        """One input batch -> (key group, SubBatch of columns) items + dead letters."""
        return decode(decoder, batch, None)

    return decode_one_batch


def _nonempty(batch: list[RawRecord] | MessageBatch) -> bool:
    return len(batch) > 0


def _partition_of(batch: list[RawRecord] | MessageBatch) -> str:
    """The key of a batch's input partition (its placed key-group name where the source
    gives one, so the gate runs on the worker that reads the partition).
    """
    if type(batch) is MessageBatch:
        if batch.group:
            return batch.group
        raw = as_raw(batch.items[0])
    else:
        raw = batch[0]  # type: ignore[index]  # a list here
    return f"{raw.source}/{raw.partition}"


def _quota_shares(settings: Settings, source: Any) -> int:
    """The number of input partitions a tenant's quota is split over."""
    if settings.quota_partitions:
        return settings.quota_partitions
    try:
        return max(1, len(source.list_parts()))
    except Exception as exc:  # noqa: BLE001 - any source error: say which setting helps
        raise ValueError(
            f"cannot count the source's partitions to split tenant quotas ({exc}); "
            "set AD_QUOTA_PARTITIONS"
        ) from None


_warned_unkeyed = False


def _check_keyed(raw: RawRecord) -> None:
    """Key groups by partition assume each sensor stays in one partition, which Kafka
    gives when producers key records by sensor. A record without a key (one per batch
    is looked at) means they do not: say so, once, and count such batches.
    """
    global _warned_unkeyed
    if raw.key is None:
        metrics.UNKEYED_BATCHES.inc()
        if not _warned_unkeyed:
            _warned_unkeyed = True
            log.warning(
                "AD_KEY_BY=partition, but %s/%s has records without a key: Kafka "
                "then spreads a sensor over partitions, and each partition keeps "
                "a state of its own for it; key records by sensor_id or use "
                "AD_KEY_BY=sensor",
                raw.source,
                raw.partition,
            )


def rec_reason(rec: OutRecord) -> str:
    """The reason of a dead-letter record (for metrics)."""
    import orjson

    return str(orjson.loads(rec.value).get("reason", "unknown"))


#: young-generation GC threshold while a flow runs (CPython's default is 700)
GC_THRESHOLD = 50_000


def tune_gc() -> None:
    """Make the cyclic garbage collector cheap for a running flow.

    The hot path allocates many short-lived, acyclic containers (window aggregates,
    columns, sub-batches, alert bodies), which at CPython's default threshold start a
    young-generation collection every 700 allocations, and older collections walk every
    warm sensor's state, so collections would cost a large share of decode and window
    time. A threshold of ``GC_THRESHOLD`` makes them rare; what exists at startup
    (modules, settings, models) is frozen out of collection altogether. The flow creates
    no reference cycles on its hot path, so nothing waits longer to be freed.
    """
    gc.freeze()
    t0, t1, t2 = gc.get_threshold()
    gc.set_threshold(max(GC_THRESHOLD, t0), t1, t2)


def build_flow(
    settings: Settings | None = None,
    *,
    source: Any = None,
    sink: Any = None,
    dlq: Any = None,
    serve: bool | None = None,
) -> Dataflow:
    """The dataflow for ``settings``; the factory ``bytewax.run`` calls.

    Args:
        settings: the configuration; default: read from ``AD_*`` / ``AD_CONFIG``, where a
            bad value exits with status 2 and one line naming the key with an example.
        source: replaces the configured source (tests use Bytewax's ``TestingSource``).
        sink: replaces the configured sink (tests use Bytewax's ``TestingSink``).
        dlq: replaces the configured dead-letter sink.
        serve: set this process up to run the flow (metrics server, GC tuning); default:
            only when the settings come from the environment.
    """
    if settings is None:
        settings = _settings_or_exit()
        serve = True if serve is None else serve
    s = settings
    models = Models(s.detector, s.detector_params)
    models.get("builtin", "")  # fail fast on a bad detector name or parameters
    registry = _registry(s.tenants, serve)
    dlq_routes = dead_letter_routes(registry)

    ctx = s.connector_context()
    try:
        source = source or make_source(s.source, ctx)
        sink = sink or make_sink(s.sink, ctx)
        dlq = dlq or make_sink(s.dlq, ctx)
    except ValueError as exc:  # a connector refused its URL or cannot reach its system
        if not serve:
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if serve:
        metrics.start_metrics_server(s.metrics_port)
        if s.dogstatsd:
            dogstatsd.start(s.dogstatsd)
        summary.install(s.url("source"))
        tune_gc()
    flow = Dataflow(s.flow_id)
    batches = op.input("read", flow, source)
    if registry is None:
        decoded = op.flat_map("decode", batches, _decode_step(s, registry))
    else:  # decode per input partition, in its order: registry switches, quotas
        shares = _quota_shares(s, source)
        decode = _batch_decoder(s)
        keyed = op.key_on("by-partition", op.filter("nonempty", batches, _nonempty), _partition_of)
        gated = op.stateful_batch(
            "tenant-decode",
            keyed,
            lambda resume: _Gate(
                decoder_for(s, registry),
                decode,
                registry,
                s.default_tenant,
                shares,
                resume,
                frozenset(dlq_routes),
            ),
        )
        decoded = op.flat_map("decoded", gated, lambda kv: kv[1])
    split = op.branch("split-bad", decoded, _not_dead)
    bad_in = split.falses if dlq_routes else op.map("bad-input", split.falses, lambda kv: kv[1])
    snap_dir = resolve_snapshot_dir(s.snapshot_dir)
    scored = op.stateful_batch(
        "detect", split.trues, lambda resume: _Detect(s, models, resume, snap_dir, registry)
    )
    results = op.map("unkey", scored, lambda kv: kv[1])
    is_alert = op.branch("split-alerts", results, _not_dead)
    late = is_alert.falses if dlq_routes else op.map("late", is_alert.falses, lambda tr: tr[1])
    routes = alert_routes(registry)
    ours = _routed(is_alert.trues, ALERT, routes, ctx, serve) if routes else is_alert.trues
    alerts = op.map("alerts", ours, lambda tr: tr[1])
    op.output("alerts-out", alerts, sink)
    dead = op.merge("dead-letters", bad_in, late)
    if dlq_routes:  # tenants' own dead-letter sinks (registry `dead_letters` templates)
        dead = op.map(
            "dead-letters-flow", _routed(dead, DLQ, dlq_routes, ctx, serve), lambda tr: tr[1]
        )
    op.output("dead-letters-out", dead, dlq)
    return flow


def _routed(stream: Any, kind: str, urls: Any, ctx: Any, serve: bool | None) -> Any:
    """Tenants' own sinks (registry ``alerts`` / ``dead_letters`` templates): items of
    ``stream`` tagged ``<kind>>URL`` go to URL's sink, one output step per URL; returns
    the items tagged ``kind`` alone (the flow's own sink).
    """
    route, out, each = (
        ("route", "alerts-out", "alerts")
        if kind == ALERT
        else ("dlq-route", "dead-letters-out", "dead-letters")
    )
    for url in urls:
        name = hashlib.sha256(url.encode()).hexdigest()[:12]
        mine = op.filter(f"{route}-{name}", stream, _tagged(f"{kind}>{url}"))
        op.output(
            f"{out}-{name}",
            op.map(f"{each}-{name}", mine, lambda tr: tr[1]),
            _sink(url, ctx, serve),
        )
    return op.filter(f"{route}-flow", stream, _tagged(kind))


def _not_dead(kv: tuple[str, Any]) -> bool:
    """Whether an item is not a dead letter (tagged ``dlq`` or ``dlq>URL``; key-group
    names never contain '>').
    """
    return kv[0] != DLQ and kv[0][:4] != "dlq>"


def _tagged(tag: str) -> Any:
    """A predicate: whether a result carries ``tag``."""

    def pred(tr: tuple[str, Any]) -> bool:
        return tr[0] == tag

    return pred


def _sink(url: str, ctx: Any, serve: bool | None) -> Any:
    """The sink for ``url`` (a tenant's alert sink); a bad URL stops the flow (status 2)."""
    try:
        return make_sink(url, ctx)
    except ValueError as exc:
        if not serve:
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _registry(where: str, serve: bool | None) -> Registry | None:
    """The tenant registry named by ``AD_TENANTS`` (``None`` without one)."""
    if not where:
        return None
    try:
        return load_registry(where)
    except RegistryError as exc:
        if not serve:
            raise
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _settings_or_exit() -> Settings:
    """Settings from the environment; a configuration error ends the process (status 2)."""
    try:
        return load_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def __getattr__(name: str) -> Any:
    """``flow`` is built on first use, so ``python -m bytewax.run flows.detector`` works
    while importing this module starts nothing.
    """
    if name == "flow":
        built = globals()["flow"] = build_flow()
        return built
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
