"""The cross-validation protocol on a hand-checked case, and through the harness."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.nab.cv import choose, cross_validate, make_folds
from benchmarks.nab.scorer import PROFILES, ScoredFile

STD = {"standard": PROFILES["standard"]}
NAMES = ("A/a1.csv", "A/a2.csv", "B/b1.csv")


def _sig(x: float) -> float:
    return -1.0 if x > 3 else 2.0 / (1.0 + math.exp(5.0 * x)) - 1.0


def _tp(i: int, right: int = 13, width: int = 4) -> float:
    return _sig(-(right - i + 1) / width) / _sig(-1.0)


def _files(hits: dict[str, dict[int, float]]) -> list[ScoredFile]:
    """Three 20-row files (probation: 3 rows), each with the window rows 10..13."""
    out = []
    for name in NAMES:
        s = np.zeros(20)
        for i, v in hits.get(name, {}).items():
            s[i] = v
        out.append(ScoredFile(name, s, [(10, 13)]))
    return out


# candidate 0 finds every window (b1 only late, after a false positive at row 5);
# candidate 1 finds only b1's window, early and cleanly.
CAND0 = _files({"A/a1.csv": {10: 0.9}, "A/a2.csv": {11: 0.8}, "B/b1.csv": {5: 0.95, 12: 0.6}})
CAND1 = _files({"B/b1.csv": {10: 0.7}})


def test_folds() -> None:
    assert make_folds(NAMES, "category") == [[0, 1], [2]]
    assert make_folds(NAMES, "series") == [[0], [1], [2]]
    with pytest.raises(ValueError, match="fold kind"):
        make_folds(NAMES, "random")


def test_hand_checked_category_folds() -> None:
    # Fold "A" held out: tuned on b1 alone, candidate 1 at 0.7 (raw +1) beats candidate 0
    # at 0.6 (FP -0.11 plus a late TP); a1 and a2 then get nothing from candidate 1: -2.
    assert choose([CAND0, CAND1], [2], STD["standard"])[:2] == (1, 0.7)
    # Fold "B" held out: tuned on a1 + a2, candidate 0 at 0.8 finds both; on b1 at 0.8 it
    # fires only at row 5 (a false positive with no window before it: -0.11) and misses.
    assert choose([CAND0, CAND1], [0, 1], STD["standard"])[:2] == (0, 0.8)
    r = cross_validate([CAND0, CAND1], STD, "category")["standard"]
    pooled = -2.0 + (-0.11 - 1.0)
    assert math.isclose(r["cv"]["raw"], pooled)
    assert (r["cv"]["tp"], r["cv"]["fp"], r["cv"]["fn"]) == (0, 1, 3)
    assert math.isclose(r["cv_score"], 100.0 * (pooled + 3.0) / 6.0)
    assert [f["held_out"] for f in r["folds"]] == ["A", "B"]
    assert [(f["candidate"], f["threshold"]) for f in r["folds"]] == [(1, 0.7), (0, 0.8)]
    # In-sample: one choice on all three files, candidate 0 at 0.6.
    ins = _tp(10) + _tp(11) + (-0.11 + _tp(12))
    assert (r["in_sample"]["candidate"], r["in_sample"]["threshold"]) == (0, 0.6)
    assert math.isclose(r["in_sample_score"], 100.0 * (ins + 3.0) / 6.0)
    assert r["cv_score"] < r["in_sample_score"]


def test_series_folds_tune_on_the_other_series() -> None:
    r = cross_validate([CAND0, CAND1], STD, "series")["standard"]
    # a1 held out: tuned on a2 + b1 -> candidate 0 at 0.6; a1 fires at row 10 (TP, 1.0)
    # a2 held out: tuned on a1 + b1 -> candidate 0 at 0.6; a2 fires at 11
    # b1 held out: tuned on a1 + a2 -> candidate 0 at 0.8; b1: FP at 5 and a miss
    assert [(f["candidate"], f["threshold"]) for f in r["folds"]] == [(0, 0.6), (0, 0.6), (0, 0.8)]
    assert math.isclose(r["cv"]["raw"], _tp(10) + _tp(11) - 0.11 - 1.0)


def test_harness_cv_and_grid(tmp_path, capsys) -> None:  # noqa: ANN001
    from benchmarks.nab.harness import main
    from tests.benchmarks.test_nab_harness import _make_split

    _make_split(tmp_path / "split")
    grid = tmp_path / "grid.json"
    grid.write_text('[{"z_scale": 4.0}, {"z_scale": 8.0}]')
    summary = main(
        [
            "--data",
            str(tmp_path / "split"),
            "--out",
            str(tmp_path / "out"),
            "--mode",
            "direct",
            "--detector",
            "mad",
            "--cv",
            "category",
            "--grid",
            str(grid),
        ]
    )
    cv = summary["cv"]["results"]["standard"]
    assert len(cv["folds"]) == 2 and summary["cv"]["folds"] == "category"
    # catB holds no window: tuned on catA alone, which the spike makes easy
    assert cv["in_sample"]["tp"] == 1 and cv["in_sample_score"] >= cv["cv_score"]
    assert summary["params"] in ({"z_scale": 4.0}, {"z_scale": 8.0})
    assert 0 < summary["state_bytes_per_key"]["max"] <= 4096
    assert "cross-validation (category" in capsys.readouterr().out


def test_ensemble_cv_tunes_the_grid_its_defaults_came_from(tmp_path) -> None:  # noqa: ANN001
    from benchmarks.nab.harness import DEFAULT_GRID, main
    from detectors.ensemble import EnsembleDetector
    from tests.benchmarks.test_nab_harness import _make_split

    grid = json.loads(DEFAULT_GRID.read_text())
    defaults = EnsembleDetector.defaults
    assert any(all(defaults[k] == v for k, v in g.items()) for g in grid)  # defaults are in it
    _make_split(tmp_path / "split")
    args = ["--data", str(tmp_path / "split"), "--out", str(tmp_path / "o"), "--mode", "direct"]
    summary = main([*args, "--cv", "category"])
    assert summary["cv"]["grid"] == grid
    assert main([*args, "--cv", "category", "--grid", "none"])["cv"]["grid"] == [{}]
