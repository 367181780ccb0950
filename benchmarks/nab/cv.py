"""Cross-validation of everything that is tuned: the threshold and any hyper-parameters.

Protocol (``python -m benchmarks.nab --cv category|series``; see ``benchmarks/nab/README.md``):

1. Every candidate configuration (the detector's parameters, or each entry of a ``--grid``)
   scores every series once. Scores are causal and per series, so a series' scores do not
   depend on which other series are present.
2. Folds: ``category`` holds out one NAB category (the folder name) at a time;
   ``series`` holds out one series at a time.
3. For each fold and profile, the (candidate, threshold) pair with the best total raw NAB
   score on the *other* folds' series is chosen (``scorer.sweep`` per candidate; ties go to
   the earlier candidate). The held-out series are scored at that choice.
4. The pooled CV score sums every series' raw score at its own fold's choice and
   normalises it the NAB way over all series (null detector 0, perfect 100).
5. The in-sample score is the same choice made on all series at once; that choice is
   the one to deploy (it is the procedure the CV validated).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from benchmarks.nab.scorer import ScoredFile, normalise, score_file, sweep

FOLD_KINDS = ("category", "series")


def make_folds(names: Sequence[str], kind: str) -> list[list[int]]:
    """Indices of ``names`` (``<category>/<file>.csv``) per held-out fold, in name order."""
    if kind == "series":
        return [[i] for i in range(len(names))]
    if kind != "category":
        raise ValueError(f"unknown fold kind {kind!r}; choose from {FOLD_KINDS}")
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.split("/", 1)[0], []).append(i)
    return [groups[k] for k in sorted(groups)]


def choose(
    candidates: Sequence[Sequence[ScoredFile]], rows: Sequence[int], profile: dict[str, float]
) -> tuple[int, float, float]:
    """The (candidate index, threshold, raw score) that is best on files ``rows``."""
    best = (0, float("inf"), float("-inf"))
    for c, files in enumerate(candidates):
        thr, raw = sweep([files[i] for i in rows], profile)
        if raw > best[2]:
            best = (c, thr, raw)
    return best


def _total(files: Sequence[ScoredFile], thr: float, profile: dict[str, float]) -> dict[str, float]:
    tot = {"raw": 0.0, "tp": 0, "fp": 0, "fn": 0}
    for f in files:
        for k, v in score_file(f, thr, profile).items():
            tot[k] += v
    return tot


def cross_validate(
    candidates: Sequence[Sequence[ScoredFile]],
    profiles: dict[str, dict[str, float]],
    kind: str,
) -> dict[str, dict[str, Any]]:
    """Per profile: pooled CV and in-sample scores, counts and the per-fold choices.

    ``candidates[c][i]`` is series ``i`` scored by candidate configuration ``c`` (every
    candidate lists the same series in the same order).
    """
    files = candidates[0]
    names = [f.name for f in files]
    n_win = sum(len(f.windows) for f in files)
    folds = make_folds(names, kind)
    everything = list(range(len(files)))
    out: dict[str, dict[str, Any]] = {}
    for pname, prof in profiles.items():
        pooled = {"raw": 0.0, "tp": 0, "fp": 0, "fn": 0}
        fold_rows = []
        for held in folds:
            held_set = set(held)
            train = [i for i in everything if i not in held_set]
            c, thr, _ = choose(candidates, train, prof)
            tot = _total([candidates[c][i] for i in held], thr, prof)
            for k, v in tot.items():
                pooled[k] += v
            fold_rows.append(
                {
                    "held_out": names[held[0]].split("/", 1)[0]
                    if kind == "category"
                    else names[held[0]],
                    "series": len(held),
                    "candidate": c,
                    "threshold": thr,
                    **tot,
                }
            )
        c_all, thr_all, _ = choose(candidates, everything, prof)
        ins = _total(candidates[c_all], thr_all, prof)
        out[pname] = {
            "cv_score": normalise(pooled["raw"], n_win, prof),
            "cv": pooled,
            "in_sample_score": normalise(ins["raw"], n_win, prof),
            "in_sample": {**ins, "candidate": c_all, "threshold": thr_all},
            "folds": fold_rows,
        }
    return out


def format_cv(results: dict[str, dict[str, Any]], kind: str) -> str:
    """The CV table: one line per profile."""
    lines = [
        f"{'profile':<20} {'CV (' + kind + ')':>18} {'TP/FP/FN':>12} "
        f"{'in-sample':>10} {'TP/FP/FN':>12} {'threshold':>10} {'cand':>5}"
    ]
    for name, r in results.items():
        cv, ins = r["cv"], r["in_sample"]
        cv_c = f"{int(cv['tp'])}/{int(cv['fp'])}/{int(cv['fn'])}"
        in_c = f"{int(ins['tp'])}/{int(ins['fp'])}/{int(ins['fn'])}"
        lines.append(
            f"{name:<20} {r['cv_score']:>18.2f} {cv_c:>12} {r['in_sample_score']:>10.2f} "
            f"{in_c:>12} {ins['threshold']:>10.5f} {ins['candidate']:>5}"
        )
    return "\n".join(lines)
