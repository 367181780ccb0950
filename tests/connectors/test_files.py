"""file:// inputs as users have them: globs, directories, .gz, equal names in different
folders, one sensor over several files; file sinks that say whether they truncate."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from connectors.base import ConnectorContext, parse_url
from connectors.files import expand_inputs, sink_from_url, source_from_url
from tests.flowrun import START_MS, flow_env, init_recovery, run_to_completion


def _lines(sensor: str, start: int, n: int, step_ms: int = 60_000) -> bytes:
    rows = [
        json.dumps(
            {
                "sensor_id": sensor,
                "timestamp": START_MS + (start + i) * step_ms,
                "value": 10.0 + (i % 5),
            }
        )
        for i in range(n)
    ]
    return ("\n".join(rows) + "\n").encode()


def _drain(src: object) -> list:
    out = []
    for part in src.list_parts():  # type: ignore[attr-defined]
        p = src.build_part("in", part, None)  # type: ignore[attr-defined]
        try:
            while True:
                for batch in p.next_batch():
                    out.extend(batch)
        except StopIteration:
            p.close()
    return out


def test_globs_directories_and_gz_are_read(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_bytes(_lines("a", 0, 3))
    with gzip.open(tmp_path / "d" / "b.jsonl.gz", "wb") as f:
        f.write(_lines("b", 0, 4))
    (tmp_path / "c-1.jsonl").write_bytes(_lines("c", 0, 2))
    (tmp_path / "c-2.jsonl").write_bytes(_lines("c", 2, 2))
    spec = f"{tmp_path}/d,{tmp_path}/c-*.jsonl"
    assert [p.name for p in expand_inputs(spec)] == [
        "a.jsonl",
        "b.jsonl.gz",
        "c-1.jsonl",
        "c-2.jsonl",
    ]
    recs = _drain(source_from_url(parse_url(f"file://{spec}"), ConnectorContext()))
    assert len(recs) == 11
    assert recs[-1].offset == "c-2.jsonl:2"


def test_nothing_matching_names_the_input_and_an_example(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no input file matches .*nope-\*.*e\.g\. file:///"):
        expand_inputs(f"{tmp_path}/nope-*.jsonl")


def test_equal_names_in_different_folders_are_both_read(tmp_path: Path) -> None:
    for d in ("x", "y"):
        (tmp_path / d).mkdir()
        (tmp_path / d / "in.jsonl").write_bytes(_lines(d, 0, 5))
    for parallel in ("false", "true"):
        src = source_from_url(
            parse_url(f"file://{tmp_path}/x/in.jsonl,{tmp_path}/y/in.jsonl?parallel={parallel}"),
            ConnectorContext(),
        )
        assert len(_drain(src)) == 10
        if parallel == "true":
            assert src.list_parts() == ["x/in.jsonl", "y/in.jsonl"]


def test_one_sensor_split_over_files_keeps_its_order(tmp_path: Path) -> None:
    """Readings of each sensor over 4 daily files: nothing is late, every window scored."""
    for day in range(4):
        rows = b"".join(_lines(s, day * 300, 300) for s in ("a", "b"))
        (tmp_path / f"day-{day}.jsonl").write_bytes(rows)
    env = flow_env(
        AD_SOURCE=f"file://{tmp_path}/day-*.jsonl?batch=50",
        AD_SINK=f"file://{tmp_path}/alerts.jsonl",
        AD_DLQ=f"file://{tmp_path}/dlq.jsonl",
        AD_EMIT="all",
        AD_DETECTOR="mad",
    )
    run_to_completion(env, None, workers=2, log=tmp_path / "log")
    assert (tmp_path / "dlq.jsonl").read_bytes() == b""
    assert len((tmp_path / "alerts.jsonl").read_bytes().splitlines()) == 2 * 1200


def test_a_fresh_run_that_writes_nothing_leaves_no_stale_alerts(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"not json\n")
    old = b'{"alert_id": "from-last-week"}\n'
    for mode, expected in (("", b""), ("?mode=append", old)):
        (tmp_path / "alerts.jsonl").write_bytes(old)
        env = flow_env(
            AD_SOURCE=f"file://{tmp_path}/in.jsonl",
            AD_SINK=f"file://{tmp_path}/alerts.jsonl{mode}",
            AD_DLQ=f"file://{tmp_path}/dlq.jsonl",
        )
        run_to_completion(env, init_recovery(tmp_path / f"rec{mode[-3:]}"), log=tmp_path / "log")
        assert (tmp_path / "alerts.jsonl").read_bytes() == expected, mode


def test_bad_sink_urls_fail_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="mode=append"):
        sink_from_url(parse_url(f"file://{tmp_path}/a.jsonl?mode=overwrite"), ConnectorContext())
    (tmp_path / "plain").write_text("a file, not a folder")
    with pytest.raises(ValueError, match="not a directory"):
        sink_from_url(parse_url(f"file://{tmp_path}/plain/a.jsonl"), ConnectorContext())


def test_a_nab_style_csv_file_runs_through_the_flow(tmp_path: Path) -> None:
    rows = ["timestamp,value"] + [
        f"2014-04-01 {h:02d}:{m:02d}:00,{10 + (h * 60 + m) % 7 + (90 if h == 20 else 0)}"
        for h in range(24)
        for m in range(0, 60, 5)
    ]
    (tmp_path / "machine_temp.csv").write_text("\n".join(rows) + "\n")
    env = flow_env(
        AD_SOURCE=f"file://{tmp_path}/machine_temp.csv",
        AD_FORMAT="csv",
        AD_WINDOW="none",
        AD_EMIT="all",
        AD_SINK=f"file://{tmp_path}/alerts.jsonl",
        AD_DLQ=f"file://{tmp_path}/dlq.jsonl",
    )
    run_to_completion(env, None, log=tmp_path / "log")
    out = [json.loads(x) for x in (tmp_path / "alerts.jsonl").read_bytes().splitlines()]
    assert (tmp_path / "dlq.jsonl").read_bytes() == b""
    assert len(out) == len(rows) - 1 and {a["sensor_id"] for a in out} == {"machine_temp"}
    assert out[0]["window_start"] == "2014-04-01T00:00:00.000Z"
