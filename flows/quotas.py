"""Tenant quotas and tenant-registry switches, per input partition, in input order.

With a tenant registry (``AD_TENANTS``) the flow decodes in a stateful step keyed by
input partition (:class:`TenantGate`, one per partition): a partition's records reach it
in the partition's order on every run, so every decision taken there depends only on
that order and on event times, never on how partitions interleave, and a replay from a
checkpoint decides exactly as the first run did.

* **Registry switches.** A signed ``tenants`` marker (``adctl tenants push``) names a
  registry stored in the model store; from the marker's position on, this partition's
  records are checked against it (unknown tenants, default tenant, quotas). The ref in
  force is part of the snapshot.
* **Quotas.** A tenant's ``quota`` is split evenly over ``shares`` input partitions
  (``AD_QUOTA_PARTITIONS``, default the source's partition count), like Kafka's
  per-broker quotas: each partition enforces ``rate/shares`` records per event-time
  second with a token bucket of ``max(1, burst/shares)`` tokens, refilled by the
  advance of the tenant's newest event time in the partition (a record older than that
  refills nothing), and admits at most ``max(1, max_sensors // shares)`` distinct
  sensors of the tenant. A record over the rate is a dead letter ``quota_exceeded``, a
  new sensor over the limit ``sensor_quota``; a refused record takes no token and adds
  no sensor. Buckets and sensor sets are part of the snapshot.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from typing import Any

from flows import metrics
from state.tenants import Registry, RegistryError, load_registry

__all__ = ["TenantGate", "alert_routes", "dead_letter_routes", "limits_of"]

log = logging.getLogger(__name__)

#: registries by ref, loaded once per process (refs name immutable artifacts)
_LOADED: dict[str, Registry] = {}


def load_ref(ref: str) -> Registry:
    """The registry stored under ``ref`` (cached: artifacts are immutable)."""
    reg = _LOADED.get(ref)
    if reg is None:
        reg = _LOADED[ref] = load_registry(ref)
    return reg


def alert_routes(registry: Registry | None) -> list[str]:
    """The alert sink URLs the tenants of ``registry`` route to (their ``alerts``
    template filled in), sorted: the flow builds one sink per URL at start-up.
    """
    if registry is None:
        return []
    return sorted({t.alerts_url for t in registry if t.alerts_url})


def dead_letter_routes(registry: Registry | None) -> list[str]:
    """The dead-letter sink URLs the tenants of ``registry`` route to, sorted."""
    if registry is None:
        return []
    return sorted({t.dead_letters_url for t in registry if t.dead_letters_url})


def dead_letter_tags(registry: Registry, routes: frozenset[str]) -> dict[str, str]:
    """Tenant -> the output tag of its dead letters (``dlq>URL``) under ``registry``,
    for the tenants whose ``dead_letters`` URL the flow has a sink for.
    """
    return {
        t.id: f"dlq>{t.dead_letters_url}"
        for t in registry
        if t.dead_letters_url and t.dead_letters_url in routes
    }


def limits_of(
    registry: Registry, shares: int
) -> dict[str, tuple[float | None, float, int | None, str]]:
    """Per tenant with a quota: (tokens per event-time ms, bucket size, sensors, text)
    for one of ``shares`` input partitions.
    """
    out: dict[str, tuple[float | None, float, int | None, str]] = {}
    for t in registry:
        q = t.quota
        if q.unlimited:
            continue
        rate = None if q.rate is None else q.rate / shares / 1000.0
        cap = max(1.0, (q.capacity or 0.0) / shares)
        sensors = None if q.max_sensors is None else max(1, q.max_sensors // shares)
        text = f"{q.to_dict()} split over {shares} input partition(s)"
        out[t.id] = (rate, cap, sensors, text)
    return out


class TenantGate:
    """Decode one input partition's batches, applying registry switches and quotas.

    Args:
        decoder: this partition's own ``flows.decode.Decoder`` (its tenants and default
            tenant follow the registry in force here).
        decode: ``decode(decoder, batch, gate) -> items``, the flow's decode step.
        registry: the registry the flow started with (``AD_TENANTS``).
        default_tenant: ``AD_DEFAULT_TENANT`` (wins over the registry's).
        shares: the number of input partitions a quota is split over.
        resume: the snapshot to resume from (``None``: a fresh partition).
    """

    def __init__(
        self,
        decoder: Any,
        decode: Callable[[Any, Any, Any], list],
        registry: Registry,
        default_tenant: str,
        shares: int,
        resume: bytes | None,
        dlq_routes: frozenset[str] = frozenset(),
    ) -> None:
        self.decoder = decoder
        self._decode = decode
        self._default = default_tenant
        self.shares = max(1, shares)
        self._dlq_routes = dlq_routes
        #: output tags of the quota dead letters of the batch being decoded, in order
        self.tags: list[str] = []
        self._dtags: dict[str, str] = {}
        #: the registry ref in force (None: the registry the flow started with)
        self.ref: str | None = None
        #: tenant -> [tokens, newest event time (ms)]
        self.buckets: dict[str, list[float]] = {}
        #: tenant -> sensors admitted in this partition
        self.seen: dict[str, set[str]] = {}
        if resume is not None:
            self.ref, self.buckets, self.seen = pickle.loads(resume)  # noqa: S301 - our own snapshot state
        self.limited: dict[str, tuple[float | None, float, int | None, str]] = {}
        self._apply(registry if self.ref is None else load_ref(self.ref))

    def _apply(self, registry: Registry) -> None:
        self.registry = registry
        self.decoder.tenants = frozenset(registry.tenants)
        self.decoder.default_tenant = self._default or registry.default_tenant or None
        self.limited = limits_of(registry, self.shares)
        if self._dlq_routes:
            self._dtags = dead_letter_tags(registry, self._dlq_routes)
        for tenant, (_rate, cap, _n, _text) in self.limited.items():
            b = self.buckets.get(tenant)
            if b is not None and b[0] > cap:
                b[0] = cap

    # -- Bytewax hooks -------------------------------------------------------------
    def on_batch(self, values: list[Any]) -> tuple[list, bool]:
        """Bytewax hook: decode this partition's batches, in order."""
        out: list[Any] = []
        for batch in values:
            out.extend(self._decode(self.decoder, batch, self))
        return [out], False

    def snapshot(self) -> bytes:
        """Bytewax hook: the registry ref in force, the buckets and the sensor sets."""
        return pickle.dumps((self.ref, self.buckets, self.seen), protocol=pickle.HIGHEST_PROTOCOL)

    # -- called by Decoder.decode_grouped, in input order --------------------------
    def switch(self, body: dict[str, Any]) -> str | None:
        """Apply a (signed, checked) registry marker; an error text if it cannot be."""
        ref = str(body["registry_ref"])
        try:
            registry = load_ref(ref)
        except RegistryError as exc:
            return f"tenant registry {ref[:200]}: {exc}"
        if registry.digest != body["version"]:
            return f"tenant registry {ref[:200]}: its digest is not the marker's version"
        self.ref = ref
        self._apply(registry)
        log.info("tenant registry %s in force from this input position", registry.version)
        return None

    def admit(self, tenant: str, sensor: str, ts: int) -> tuple[str, str] | None:
        """``None`` if the reading is within ``tenant``'s quota, else (reason, error)."""
        rate, cap, most, text = self.limited[tenant]
        new = False
        if most is not None:
            seen = self.seen.get(tenant)
            if seen is None:
                seen = self.seen[tenant] = set()
            if sensor not in seen:
                if len(seen) >= most:
                    return self._hit(
                        "sensor_quota",
                        tenant,
                        f"tenant {tenant!r} has its {most} sensors in this input partition "
                        f"(quota {text})",
                    )
                new = True
        if rate is not None:
            b = self.buckets.get(tenant)
            if b is None:
                b = self.buckets[tenant] = [cap, float(ts)]
            elif ts > b[1]:
                b[0] = min(cap, b[0] + (ts - b[1]) * rate)
                b[1] = float(ts)
            if b[0] < 1.0:
                return self._hit(
                    "quota_exceeded",
                    tenant,
                    f"tenant {tenant!r} is over its rate in this input partition (quota {text})",
                )
            b[0] -= 1.0
        if new:
            self.seen[tenant].add(sensor)
        return None

    def _hit(self, reason: str, tenant: str, error: str) -> tuple[str, str]:
        self.tags.append(self._dtags.get(tenant, "dlq"))
        metrics.QUOTA_HITS.labels(reason, tenant).inc()
        metrics.DEAD_LETTERS.labels(reason, tenant).inc()
        return reason, error
