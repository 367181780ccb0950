"""The flow's Prometheus metrics, and the server every flow process runs (prometheus-client).

Connector metrics live with their connector (e.g. ``connectors.kafka``); they register
in the same default registry, so this server serves them too.

The flow increments these; ``start_metrics_server`` serves them on
``AD_METRICS_PORT + process_id`` so several processes on one host do not collide.
"""

from __future__ import annotations

import os

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RECORDS_IN = Counter("ad_records_in_total", "Input records decoded", ["source"])
ALERTS_OUT = Counter("ad_alerts_total", "Alerts emitted", ["detector", "tenant"])
READINGS = Counter("ad_readings_total", "Valid readings that reached a sensor's state", ["tenant"])
WINDOWS_OUT = Counter("ad_windows_scored_total", "Windows scored")
DEAD_LETTERS = Counter(
    "ad_dead_letters_total",
    "Records sent to the dead-letter sink (tenant: empty where the record names none)",
    ["reason", "tenant"],
)
QUOTA_HITS = Counter(
    "ad_quota_hits_total",
    "Records refused by a tenant quota (reason: quota_exceeded or sensor_quota)",
    ["reason", "tenant"],
)
WINDOW_CLOSE_LATENCY = Histogram(
    "ad_window_close_latency_seconds",
    "Wall time from the newest record of a window arriving to the window being scored",
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REMOTE_KEY_GROUPS = Counter(
    "ad_remote_key_groups_total",
    "Key groups by input partition that run on another worker than the one reading "
    "their partition (AD_KEY_BY=partition; every record then crosses between workers)",
)
UNKEYED_BATCHES = Counter(
    "ad_unkeyed_input_batches_total",
    "Input batches whose sampled record has no key, with AD_KEY_BY=partition (which "
    "assumes records keyed by sensor)",
)
KEY_LOCALITY = Counter(
    "ad_key_locality_readings_total",
    "Kafka readings with AD_KEY_BY=auto by where they arrived: `home` (their sensor's "
    "home partition: they stay on the worker that read them) or `away` (they cross to "
    "it), with why: `keyed`, `unkeyed`, `other_key` (a key other than the sensor id), "
    "`other_partition` (keyed by sensor, put elsewhere: another partitioner?)",
    ["where", "reason"],
)
MODEL_VERSION = Gauge(
    "ad_model_version_info", "Model version in use (value 1)", ["detector", "version"]
)

_started = False


def start_metrics_server(port: int) -> None:
    """Serve metrics once per process on ``port + BYTEWAX_PROCESS_ID`` (0 disables)."""
    global _started
    if _started or port <= 0:
        return
    offset = int(os.environ.get("AD_PROCESS_ID", "0"))
    start_http_server(port + offset, addr=os.environ.get("AD_METRICS_ADDR", "127.0.0.1"))
    _started = True
