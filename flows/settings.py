"""The flow's settings, each declared once: name, type, default, valid example, help.

Read from ``AD_*`` environment variables and an optional YAML file (``AD_CONFIG=path``);
environment variables win over the file. Everything else derives from the declarations
below: the loader and its error messages, the README's configuration table
(``python -m flows.settings --markdown``, kept in step by a test) and the defaults that
``adctl`` shows for the flow's variables.

A frozen dataclass with field metadata rather than pydantic-settings: the flow reads its
settings on the hot path as plain attributes, the values need our own coercions
(durations, URLs with examples, librdkafka pass-through), and errors must be one line
that names the key and a valid example, which is simpler to guarantee here than to
re-format from a validation library's error tree.

Kafka client settings pass through verbatim: YAML ``kafka: {security.protocol: SASL_SSL}``
or env ``AD_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` (``_`` becomes ``.``, lower-cased). Secret
values (``secret`` settings, Kafka passwords) never appear in ``repr`` or messages.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import sys
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from connectors import keeps_order
from connectors.base import ConnectorContext, SourceURL, parse_url
from schemas.markers import MIN_KEY_BYTES
from schemas.timestamps import UNITS, parse_time_setting
from schemas.values import parse_bool, parse_duration
from state.recovery import is_fresh_run, process_index, recovery_dir

__all__ = [
    "PROCESS_KEYS",
    "Settings",
    "SettingsError",
    "declared",
    "declared_default",
    "flow_env_names",
    "load_settings",
    "markdown_table",
]

log = logging.getLogger(__name__)


class SettingsError(ValueError):
    """A configuration problem, reported at start-up with the key and a valid example."""


def setting(
    default: Any,
    help: str,
    example: str,
    *,
    kind: str = "str",
    choices: tuple[str, ...] = (),
    secret: bool = False,
    shown: str = "",
) -> Any:
    """Declare one setting (a dataclass field carrying its metadata).

    Args:
        default: the value when the key is not set.
        help: one line for the README table and ``adctl --help``.
        example: a valid value, shown in every error about this key.
        kind: ``str``, ``url``, ``time`` (RFC 3339 or epoch seconds), ``choice``,
            ``duration``, ``fraction`` (0..1), ``count`` (integer > 0), ``natural``
            (integer >= 0), ``bool``, ``json`` (an object), ``mapping``.
        choices: the valid values of a ``choice``.
        secret: never printed (``repr``, messages, logs).
        shown: the default as the README shows it (default: derived from ``default``).
    """
    meta = {
        "help": help,
        "example": example,
        "kind": kind,
        "choices": choices,
        "secret": secret,
        "shown": shown,
    }
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Settings:
    """Everything the flow can be configured with (see README, Configuration)."""

    source: str = setting(
        "demo://",
        "where records come from (URL, below)",
        "kafka://127.0.0.1:9092/sensors",
        kind="url",
    )
    sink: str = setting("stdout://", "where alerts go", "kafka://127.0.0.1:9092/alerts", kind="url")
    dlq: str = setting(
        "stderr://", "where dead letters go", "kafka://127.0.0.1:9092/dead-letters", kind="url"
    )
    format: str = setting(
        "json",
        "`json`, `avro` (Confluent wire format), `protobuf` or `csv` (see Input records)",
        "json",
        kind="choice",
        choices=("json", "avro", "protobuf", "csv"),
    )
    schema: str = setting(
        "",
        "reader schema: `schemas/sensor_reading_v1.avsc`, `…_v2.proto`, …",
        "schemas/sensor_reading_v1.avsc",
        shown="v2 schema",
    )
    schema_registry: str = setting(
        "",
        "Confluent schema registry URL for writer schemas (else `schemas/`)",
        "http://127.0.0.1:8081",
    )
    tenants: str = setting(
        "",
        "tenant registry (YAML file or model-store ref, see Tenants and security): records "
        "of tenants it does not list are dead letters `unknown_tenant`; a tenant's "
        "threshold, detector, windows, sinks and quota apply; read at start-up, "
        "switched at an input position by `adctl tenants push`",
        "/etc/ad/tenants.yaml",
    )
    default_tenant: str = setting(
        "",
        "tenant of records without a `tenant_id` (empty: the registry's `default_tenant`, "
        "else none; state is keyed by tenant and sensor)",
        "shared",
    )
    quota_partitions: int = setting(
        0,
        "tenant quotas are split evenly over this many input partitions, each enforcing "
        "its share in its own input order (`0`: the source's partition count at start-up; "
        "see Tenants and security)",
        "8",
        kind="natural",
    )
    flow_id: str = setting(
        "anomaly-detector", "identity of the flow (Kafka transactional ids)", "plant-7-detector"
    )
    window: str = setting(
        "tumbling",
        "`tumbling`, `sliding`, `session`, or `none` (score every record)",
        "tumbling",
        kind="choice",
        choices=("tumbling", "sliding", "session", "none"),
    )
    window_size: float = setting(60.0, "tumbling and sliding window length", "60s", kind="duration")
    window_slide: float = setting(30.0, "sliding window step", "30s", kind="duration")
    session_gap: float = setting(
        300.0, "session windows: gap that ends a session", "5m", kind="duration"
    )
    allowed_lateness: float = setting(
        0.0,
        "how far behind a sensor's newest event time a record may be",
        "10s",
        kind="duration",
    )
    reorder_wait: float = setting(
        10.0,
        "sources that do not keep order (Pub/Sub): records wait this long (processing "
        "time) and are then used in event-time order; `0s` turns it off",
        "5s",
        kind="duration",
    )
    timestamp_unit: str = setting(
        "auto",
        "unit of numeric timestamps: `s`, `ms`, `us`, `ns`, or `auto` (by magnitude: "
        "< 1e11 seconds, < 1e14 milliseconds, < 1e17 microseconds, else nanoseconds)",
        "ms",
        kind="choice",
        choices=UNITS,
    )
    earliest_time: str = setting(
        "2000-01-01T00:00:00Z",
        "records dated before this are dead letters `bad_timestamp` (RFC 3339 or epoch "
        "seconds; catches seconds read as milliseconds and zero placeholders)",
        "1970-01-01T00:00:00Z",
        kind="time",
    )
    max_future: float = setting(
        86400.0,
        "how far ahead of it a record may be (else dead letter `future`)",
        "1d",
        kind="duration",
    )
    detector: str = setting("ensemble", "detector (`ensemble`, `mad`)", "mad")
    detector_params: dict[str, Any] = setting(
        {}, "JSON parameter overrides of the detector", '{"window": 64}', kind="json"
    )
    threshold: float = setting(
        0.4755, "score at or above which a window is an alert", "0.99", kind="fraction"
    )
    emit: str = setting(
        "alerts",
        "`alerts`, or `all` to emit every scored window",
        "alerts",
        kind="choice",
        choices=("alerts", "all"),
    )
    key_groups: int = setting(
        64, "key groups of the stateful step (see Design)", "64", kind="count"
    )
    key_by: str = setting(
        "auto",
        "`auto`: each sensor's state lives with its home partition, the one its "
        "producers' partitioner gives for `key = sensor_id` (Kafka input; records there "
        "stay on the worker that reads them, any other record crosses to it), else by "
        "`sensor`; `sensor`: key groups by hash of `sensor_id`; `partition` (Kafka): one "
        "key group per input partition, whatever its records (see Design)",
        "auto",
        kind="choice",
        choices=("auto", "sensor", "partition"),
    )
    max_record_bytes: int = setting(
        1 << 20, "larger records are dead letters `oversize`", "1048576", kind="count"
    )
    metrics_port: int = setting(
        0, "Prometheus metrics on this port + process id (`0`: off)", "9464", kind="natural"
    )
    dogstatsd: str = setting(
        "",
        "also send the metrics to a DogStatsD agent at `host:port` (tags: labels, `tenant`)",
        "127.0.0.1:8125",
    )
    kafka: dict[str, str] = setting(
        {},
        "librdkafka settings, as `AD_KAFKA_<SETTING>` (`_` → `.`) or YAML `kafka:`",
        "AD_KAFKA_SECURITY_PROTOCOL=SASL_SSL",
        kind="mapping",
    )
    model_store: str = setting("", "model store (adctl)", "redis://127.0.0.1:6379/ad:models")
    control_key: str = setting(
        "",
        "secret key that signs control markers (model switches): the flow takes only "
        "markers signed with it, `adctl` signs with it; at least 16 characters",
        "<32 random hex digits, from your secret store>",
        secret=True,
    )
    control_topic: str = setting("ad-control", "control topic (adctl announcements)", "ad-control")
    snapshot_dir: str = setting(
        "",
        "where incremental key-group snapshots go (see State); `inline` keeps whole key "
        "groups in Bytewax's recovery store",
        "/var/lib/ad/recovery/ad-state",
        shown="`<-r dir>/ad-state`",
    )
    snapshot_fsync: bool = setting(
        True,
        "fsync each snapshot segment before Bytewax commits the epoch (`false`: survives a "
        "process crash, not a power loss)",
        "true",
        kind="bool",
    )

    def url(self, name: str) -> SourceURL:
        """Setting ``name`` (``source``, ``sink``, ``dlq``) parsed as a connector URL."""
        return parse_url(getattr(self, name))

    def csv_mapping(self) -> dict[str, str]:
        """CSV column names of the standard fields, and ``columns`` (a header for
        sources whose records come without one), from the source URL's parameters.
        """
        params = self.url("source").params
        keys = ("sensor_id", "timestamp", "value", "tenant_id", "columns")
        return {k: params[k] for k in keys if params.get(k)}

    @property
    def reorder_s(self) -> float:
        """Seconds records wait to be reordered: ``reorder_wait`` for a source that does
        not keep order, else 0.
        """
        return 0.0 if keeps_order(self.url("source").scheme) else self.reorder_wait

    @property
    def earliest_ms(self) -> int:
        """``earliest_time`` in epoch milliseconds."""
        return parse_time_setting(self.earliest_time)

    def connector_context(self) -> ConnectorContext:
        """What the connector factories get to know of these settings."""
        return ConnectorContext(
            flow_id=self.flow_id,
            kafka=dict(self.kafka),
            format=self.format,
            fresh=is_fresh_run(recovery_dir()),
            process_id=process_index(),
        )

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata["secret"] and value:
                value = "***"
            elif f.name == "kafka":
                value = {k: "***" if _secret_kafka_key(k) else v for k, v in value.items()}
            shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


#: ``AD_*`` variables read by the flow's processes that are not settings of the flow
#: itself (name -> help); the flow never rejects them.
PROCESS_KEYS = {
    "AD_CONFIG": "YAML settings file (the variables win over it)",
    "AD_COMPILED": "`0` runs the per-record modules interpreted even where they are compiled",
    "AD_XP": "array module of the detectors: `numpy`, `cupy` or `auto` (default)",
    "AD_PROCESS_ID": "set by `adctl run` per process (metrics port offset)",
    "AD_METRICS_ADDR": "address the metrics server binds (default `127.0.0.1`)",
    "AD_KINESIS_ENDPOINT": "Kinesis endpoint for `adctl` markers when the URL has none",
}

_DECLARED: dict[str, Field[Any]] = {f.name: f for f in fields(Settings)}
_SECRET_WORDS = ("password", "secret", "token", "key")


def _secret_kafka_key(key: str) -> bool:
    return any(w in key.lower() for w in _SECRET_WORDS) and not key.endswith(".location")


def declared_default(env: str) -> Any:
    """The declared default of flow setting ``AD_<NAME>`` (``None`` for URLs and names
    that are not settings).
    """
    f = _DECLARED.get(env[3:].lower()) if env.startswith("AD_") else None
    if f is None or f.metadata["kind"] == "url":  # a tool's URL flag has no demo default
        return None
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[operator]  # a factory when no default


def declared() -> dict[str, Field[Any]]:
    """The declarations: setting name -> dataclass field (metadata: help, example, …)."""
    return dict(_DECLARED)


def _err(key: str, msg: str) -> SettingsError:
    f = _DECLARED.get(key)
    example = f.metadata["example"] if f is not None else ""
    if example and not example.startswith("AD_"):
        example = f"AD_{key.upper()}={example}"
    return SettingsError(
        f"configuration key {key!r}: {msg}" + (f"; e.g. {example}" if example else "")
    )


def _coerce(key: str, value: Any) -> Any:
    meta = _DECLARED[key].metadata
    kind = meta["kind"]
    shown = "***" if meta["secret"] else repr(value)
    try:
        if kind == "duration":
            out = parse_duration(value)
            if out < 0:
                raise ValueError("must not be negative")
            return out
        if kind == "fraction":
            out = float(value)
            if not 0.0 <= out <= 1.0:
                raise ValueError("must be between 0 and 1")
            return out
        if kind in ("count", "natural"):
            out = int(value)
            if out < 0 or (kind == "count" and out == 0):
                raise ValueError("must be a positive integer")
            return out
        if kind == "json":
            out = json.loads(value) if isinstance(value, str) else value
            if not isinstance(out, dict):
                raise ValueError("must be a JSON object")
            return out
        if kind == "mapping":
            if not isinstance(value, dict):
                raise ValueError("must be a mapping of librdkafka settings")
            return {str(k): str(v) for k, v in value.items()}
        if kind == "bool":
            return parse_bool(str(value), _DECLARED[key].default)  # type: ignore[arg-type]
        if kind == "url":
            parse_url(str(value))
        if kind == "time":
            parse_time_setting(str(value))
        if kind == "choice" and str(value) not in meta["choices"]:
            raise ValueError(f"not one of {meta['choices']}")
        return str(value)
    except (ValueError, TypeError, RecursionError) as exc:
        detail = str(exc) if not meta["secret"] else "invalid"
        raise _err(key, f"invalid value {shown} ({detail})") from None


def typo_of(name: str) -> str | None:
    """The setting an unknown ``AD_*`` name most likely misspells, if any."""
    close = difflib.get_close_matches(name[3:].lower(), list(_DECLARED), n=1, cutoff=0.8)
    return close[0] if close else None


def _unknown_env(name: str) -> None:
    """An ``AD_*`` variable that is not a flow setting: a likely typo of one fails;
    others (another tool's, e.g. adctl's ``AD_WORKERS``) are ignored with a warning.
    """
    typo = typo_of(name)
    if typo:
        raise _err(typo, f"unknown environment variable {name} (did you mean AD_{typo.upper()}?)")
    log.warning("ignoring %s: not a setting of the flow", name)


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and ``AD_CONFIG``."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    cfg_path = env.get("AD_CONFIG")
    if cfg_path:
        path = Path(cfg_path)
        if not path.is_file():
            raise SettingsError(f"AD_CONFIG={cfg_path!r}: no such file; e.g. AD_CONFIG=ad.yaml")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            line = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SettingsError(f"AD_CONFIG={cfg_path!r}: not valid YAML ({line})") from None
        if not isinstance(data, dict):
            raise SettingsError(
                f"AD_CONFIG={cfg_path!r}: the file must hold a mapping; e.g. 'window: session'"
            )
        for key, value in data.items():
            key = str(key).replace("-", "_")
            if key == "kafka":
                kafka.update(_coerce("kafka", value))
            elif key not in _DECLARED:
                raise _err(
                    key, f"unknown key in {cfg_path} (known: {', '.join(sorted(_DECLARED))})"
                )
            else:
                raw[key] = value
    for name, value in sorted(env.items()):
        if not name.startswith("AD_"):
            continue
        key = name[3:].lower()
        if key.startswith("kafka_"):
            kafka[key[len("kafka_") :].replace("_", ".")] = value
        elif key in _DECLARED:
            raw[key] = value
        elif name not in PROCESS_KEYS and not key.startswith("stack_"):
            _unknown_env(name)
    values = {k: _coerce(k, v) for k, v in raw.items()}
    values["kafka"] = kafka
    return _check(Settings(**values))


def _check(s: Settings) -> Settings:
    """Rules between settings."""
    if s.key_by == "partition" and s.url("source").scheme != "kafka":
        raise _err(
            "key_by",
            "'partition' needs a kafka:// source (its partitions are "
            "stable and keyed by the producer); use 'sensor' for other sources",
        )
    if s.window in ("tumbling", "sliding") and s.window_size <= 0:
        raise _err("window_size", "must be > 0")
    if s.window == "sliding" and not 0 < s.window_slide <= s.window_size:
        raise _err("window_slide", "must be > 0 and <= window_size")
    if s.window == "session" and s.session_gap <= 0:
        raise _err("session_gap", "must be > 0")
    if s.dogstatsd and not s.dogstatsd.rpartition(":")[2].isdigit():
        raise _err("dogstatsd", f"{s.dogstatsd!r} is not host:port")
    if s.control_key and len(s.control_key.encode()) < MIN_KEY_BYTES:
        raise _err("control_key", f"must have at least {MIN_KEY_BYTES} characters")
    try:
        s.url("source").bool("tail", True)
    except ValueError as exc:
        raise _err("source", str(exc)) from None
    return s


def flow_env_names() -> frozenset[str]:
    """Every ``AD_*`` name the flow's processes read (settings and ``PROCESS_KEYS``)."""
    return frozenset({f"AD_{k.upper()}" for k in _DECLARED} | set(PROCESS_KEYS))


def _shown_default(f: Field[Any]) -> str:
    if f.metadata["shown"]:
        return str(f.metadata["shown"])
    default = f.default if f.default is not MISSING else None
    if default in (None, "", {}):
        return "–"
    if f.metadata["kind"] == "duration":
        d = float(default)
        for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
            if d >= size and d % size == 0:
                return f"`{d / size:g}{unit}`"
        return f"`{d:g}s`"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    return f"`{default}`"


def markdown_table() -> str:
    """The README's configuration table, from the declarations."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    for name, f in _DECLARED.items():
        key = "AD_KAFKA_<SETTING>" if name == "kafka" else f"AD_{name.upper()}"
        rows.append(f"| `{key}` | {_shown_default(f)} | {f.metadata['help']} |")
    for name, text in PROCESS_KEYS.items():
        rows.append(f"| `{name}` | – | {text} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--markdown"]:
        print("usage: python -m flows.settings --markdown", file=sys.stderr)
        raise SystemExit(2)
    print(markdown_table(), end="")
