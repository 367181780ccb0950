"""One typed settings object, read from ``AD_*`` environment variables and an optional
YAML file (``AD_CONFIG=path``). Environment variables win over the file.

Kafka client settings pass through verbatim: YAML ``kafka: {security.protocol: SASL_SSL}``
or env ``AD_KAFKA_SECURITY_PROTOCOL=SASL_SSL`` (``_`` becomes ``.``, lower-cased).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from connectors.base import SourceURL, parse_bool, parse_duration, parse_url

__all__ = ["Settings", "SettingsError", "load_settings"]


class SettingsError(ValueError):
    """A configuration problem, reported at start-up with the key and a valid example."""


WINDOWS = ("tumbling", "sliding", "session", "none")
FORMATS = ("json", "avro", "protobuf")
KEY_BY = ("sensor", "partition")
EMITS = ("alerts", "all")


@dataclass(frozen=True)
class Settings:
    """Everything the flow can be configured with (see README, Configuration)."""

    source: str = "demo://"
    sink: str = "stdout://"
    dlq: str = "stderr://"
    format: str = "json"
    schema: str = ""
    schema_registry: str = ""
    flow_id: str = "anomaly-detector"
    window: str = "tumbling"
    window_size: float = 60.0
    window_slide: float = 30.0
    session_gap: float = 300.0
    allowed_lateness: float = 0.0
    max_future: float = 86400.0
    detector: str = "ensemble"
    detector_params: dict[str, Any] = field(default_factory=dict)
    threshold: float = 0.475  # the ensemble's NAB-optimised threshold (standard profile)
    emit: str = "alerts"
    key_groups: int = 64
    #: "sensor": key groups by hash of sensor_id (any input); "partition": one key group
    #: per input partition, kept on the worker that reads it (Kafka input partitioned
    #: by sensor, as Kafka's default partitioner does with the sensor id as key)
    key_by: str = "sensor"
    max_record_bytes: int = 1 << 20
    metrics_port: int = 0
    kafka: dict[str, str] = field(default_factory=dict)
    model_store: str = ""
    control_topic: str = "ad-control"
    #: where incremental key-group snapshots go (state.snapshots): "" = next to the
    #: recovery partitions (``<-r dir>/ad-state``); "inline" = whole key groups in
    #: Bytewax's recovery store; else a directory shared by all processes
    snapshot_dir: str = ""
    snapshot_fsync: bool = True

    def url(self, name: str) -> SourceURL:
        return parse_url(getattr(self, name))


_EXAMPLES = {
    "source": "kafka://127.0.0.1:9092/sensors",
    "sink": "kafka://127.0.0.1:9092/alerts",
    "dlq": "kafka://127.0.0.1:9092/dead-letters",
    "format": "json",
    "window": "tumbling",
    "window_size": "60s",
    "window_slide": "30s",
    "session_gap": "5m",
    "allowed_lateness": "10s",
    "max_future": "1d",
    "detector": "mad",
    "detector_params": '{"window": 64}',
    "threshold": "0.99",
    "emit": "alerts",
    "key_groups": "64",
    "key_by": "partition",
    "max_record_bytes": "1048576",
    "metrics_port": "9464",
    "flow_id": "plant-7-detector",
    "schema": "schemas/sensor_reading_v1.avsc",
    "schema_registry": "http://127.0.0.1:8081",
    "model_store": "redis://127.0.0.1:6379/ad:models",
    "control_topic": "ad-control",
    "snapshot_dir": "/var/lib/ad/recovery/ad-state",
    "snapshot_fsync": "true",
}
_DURATIONS = {"window_size", "window_slide", "session_gap", "allowed_lateness", "max_future"}
_URLS = {"source", "sink", "dlq"}
_KNOWN = {f.name for f in fields(Settings)}
# AD_ variables that belong to other tools, not to the flow's settings.
FOREIGN_KEYS = frozenset(
    {
        "config",
        "process_id",
        "metrics_addr",
        "stack_dir",
        "keep_stack",
        "state_dir",
        "compiled",
    }
)


def _err(key: str, msg: str) -> SettingsError:
    example = _EXAMPLES.get(key, "")
    hint = f"; e.g. AD_{key.upper()}={example}" if example else ""
    return SettingsError(f"configuration key {key!r}: {msg}{hint}")


def _coerce(key: str, value: Any) -> Any:
    try:
        if key in _DURATIONS:
            out = parse_duration(value)
            if out < 0:
                raise ValueError("must not be negative")
            return out
        if key in ("threshold",):
            out = float(value)
            if not 0.0 <= out <= 1.0:
                raise ValueError("must be between 0 and 1")
            return out
        if key in ("key_groups", "max_record_bytes", "metrics_port"):
            out = int(value)
            if out < 0 or (key == "key_groups" and out == 0):
                raise ValueError("must be a positive integer")
            return out
        if key == "detector_params":
            out = json.loads(value) if isinstance(value, str) else value
            if not isinstance(out, dict):
                raise ValueError("must be a JSON object")
            return out
        if key == "kafka":
            if not isinstance(value, dict):
                raise ValueError("must be a mapping of librdkafka settings")
            return {str(k): str(v) for k, v in value.items()}
        if key == "snapshot_fsync":
            return parse_bool(str(value), True)
        if key in _URLS:
            parse_url(str(value))
            return str(value)
        return str(value)
    except (ValueError, TypeError, json.JSONDecodeError) as exc:
        raise _err(key, f"invalid value {value!r} ({exc})") from None


def load_settings(env: dict[str, str] | None = None) -> Settings:
    """Build :class:`Settings` from ``env`` (default ``os.environ``) and ``AD_CONFIG``."""
    env = dict(os.environ if env is None else env)
    raw: dict[str, Any] = {}
    kafka: dict[str, str] = {}
    cfg_path = env.get("AD_CONFIG")
    if cfg_path:
        path = Path(cfg_path)
        if not path.is_file():
            raise SettingsError(f"AD_CONFIG={cfg_path!r}: no such file")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise SettingsError(f"AD_CONFIG={cfg_path!r}: the file must hold a mapping")
        for key, value in data.items():
            key = str(key).replace("-", "_")
            if key == "kafka":
                kafka.update(_coerce("kafka", value))
            elif key not in _KNOWN:
                raise _err(key, f"unknown key in {cfg_path} (known: {', '.join(sorted(_KNOWN))})")
            else:
                raw[key] = value
    for name, value in env.items():
        if not name.startswith("AD_"):
            continue
        key = name[3:].lower()
        if key.startswith("kafka_"):
            kafka[key[len("kafka_") :].replace("_", ".")] = value
        elif key.startswith("stack_") or key in FOREIGN_KEYS:
            continue
        elif key not in _KNOWN:
            raise _err(
                key,
                f"unknown environment variable {name} "
                f"(known: {', '.join('AD_' + k.upper() for k in sorted(_KNOWN))})",
            )
        else:
            raw[key] = value
    values = {k: _coerce(k, v) for k, v in raw.items()}
    values["kafka"] = kafka
    s = Settings(**values)
    if s.format not in FORMATS:
        raise _err("format", f"{s.format!r} is not one of {FORMATS}")
    if s.window not in WINDOWS:
        raise _err("window", f"{s.window!r} is not one of {WINDOWS}")
    if s.emit not in EMITS:
        raise _err("emit", f"{s.emit!r} is not one of {EMITS}")
    if s.key_by not in KEY_BY:
        raise _err("key_by", f"{s.key_by!r} is not one of {KEY_BY}")
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
    parse_bool(s.url("source").param("tail"), True)
    return s


def flow_env_names() -> frozenset[str]:
    """Every ``AD_*`` name the flow reads (its settings and the foreign keys it ignores)."""
    return frozenset(f"AD_{k.upper()}" for k in _KNOWN | FOREIGN_KEYS)
