"""Smoke tests of the NAB harness on a tiny synthetic split (direct and, if present, flow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from benchmarks.nab.harness import main

REPO = Path(__file__).resolve().parents[2]


def _make_split(root: Path) -> None:
    rng = np.random.default_rng(7)
    windows = {}
    for cat, name, spike in (("catA", "s1.csv", 1500), ("catB", "s2.csv", None)):
        ts = np.datetime64("2014-01-01T00:00:00") + np.arange(2000) * np.timedelta64(300, "s")
        v = 10 + rng.normal(0, 1, 2000)
        if spike is not None:
            v[spike : spike + 5] += 40
            windows[f"{cat}/{name}"] = [
                [
                    str(ts[spike - 50]).replace("T", " ") + ".000000",
                    str(ts[spike + 50]).replace("T", " ") + ".000000",
                ]
            ]
        else:
            windows[f"{cat}/{name}"] = []
        (root / "data" / cat).mkdir(parents=True, exist_ok=True)
        with (root / "data" / cat / name).open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["timestamp", "value"])
            for t, x in zip(ts, v, strict=True):
                w.writerow([str(t).replace("T", " "), x])
    (root / "labels").mkdir()
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))


def _read(out: Path, name: str) -> list[list[str]]:
    with (out / name).open() as fh:
        return list(csv.reader(fh))


def test_direct_mode_writes_nab_layout_and_scores(tmp_path: Path) -> None:
    _make_split(tmp_path / "split")
    summary = main(
        [
            "--data",
            str(tmp_path / "split"),
            "--out",
            str(tmp_path / "out"),
            "--mode",
            "direct",
            "--batch",
            "17",
            "--json",
            str(tmp_path / "r.json"),
        ]
    )
    rows = _read(tmp_path / "out", "catA/s1.csv")
    src = _read(tmp_path / "split" / "data", "catA/s1.csv")
    assert rows[0] == ["timestamp", "value", "anomaly_score"] and len(rows) == len(src)
    assert [r[0] for r in rows[1:]] == [r[0] for r in src[1:]]
    saved = json.loads((tmp_path / "r.json").read_text())
    assert saved["series"] == 2 and saved["windows"] == 1
    std = summary["results"]["standard"]
    assert std["tp"] == 1 and std["fn"] == 0 and std["score"] > 50
    fixed = main(
        [
            "--data",
            str(tmp_path / "split"),
            "--out",
            str(tmp_path / "out2"),
            "--mode",
            "direct",
            "--threshold",
            "1.0",
        ]
    )
    assert fixed["results"]["standard"]["score"] == 0.0  # scores < 1 never fire


def test_flow_mode_matches_direct(tmp_path: Path) -> None:
    _make_split(tmp_path / "split")
    args = ["--data", str(tmp_path / "split"), "--mode"]
    main([*args, "direct", "--out", str(tmp_path / "d")])
    main([*args, "flow", "--out", str(tmp_path / "f"), "--workers", "1"])
    for name in ("catA/s1.csv", "catB/s2.csv"):
        d = np.array([float(r[2]) for r in _read(tmp_path / "d", name)[1:]])
        f = np.array([float(r[2]) for r in _read(tmp_path / "f", name)[1:]])
        assert d.shape == f.shape == (2000,)
        np.testing.assert_allclose(f, d, atol=1e-6)  # the flow rounds scores to 6 places
