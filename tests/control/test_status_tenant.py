"""``adctl status`` for one tenant of a shared flow: only the series labelled with that
tenant count, scraped from a real Prometheus endpoint."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from control.status import snapshot, summarize
from tests.control.helpers import free_port


def test_a_tenant_sees_only_its_labelled_series() -> None:
    reg = CollectorRegistry()
    records = Counter("ad_records_in", "records", ["tenant"], registry=reg)
    alerts = Counter("ad_alerts", "alerts", ["tenant"], registry=reg)
    dead = Counter("ad_dead_letters", "dead letters", ["reason", "tenant"], registry=reg)
    lag = Gauge("ad_input_lag", "lag", ["partition"], registry=reg)
    ckpt = Gauge("ad_last_checkpoint_timestamp_seconds", "checkpoint", registry=reg)
    records.labels("acme").inc(10)
    records.labels("globex").inc(32)
    alerts.labels("acme").inc(2)
    alerts.labels("globex").inc(5)
    dead.labels("quota_exceeded", "acme").inc(3)
    dead.labels("unknown_tenant", "globex").inc(7)
    lag.labels("sensors/0").set(100)
    ckpt.set(1_700_000_000)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=reg)
    try:
        ep = f"127.0.0.1:{port}"
        acme = summarize(None, snapshot([ep], tenant="acme"))
        whole = summarize(None, snapshot([ep]))
    finally:
        server.shutdown()
        thread.join(5)
    assert (acme["records_in"], acme["alerts"]) == (10.0, 2.0)
    assert acme["dead_letters"] == {"quota_exceeded": 3.0}
    assert acme["lag"] == {} and acme["total_lag"] is None
    assert acme["checkpoint_age_s"] is not None
    assert (whole["records_in"], whole["alerts"]) == (42.0, 7.0)
    assert whole["dead_letters"] == {"quota_exceeded": 3.0, "unknown_tenant": 7.0}
    assert whole["lag"] == {"sensors/0": 100.0}
