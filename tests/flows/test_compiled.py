"""The compiled per-record modules (setup.py, Cython) give exactly the output of the
interpreted source: the same scenario run in two processes, ``AD_COMPILED=0`` and the
default, must write identical results."""

from __future__ import annotations

import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

from flows.decode import CONTROL_PREFIX
from tests.flowrun import BAD_RECORDS, KEY, ROOT, START_MS, signed_marker

_ODD = [
    b'{"sensor_id": "s1", "timestamp": "2026-01-01T00:00:00Z", "value": 2}',
    b'{"sensor_id": "s3", "timestamp": 1767225600000.0, "value": 1.5}',
    b'{"sensor_id": "s4", "timestamp": 1767225600000, "value": 1.5, "rpm": 3}',
    b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": ' + b"9" * 400 + b"}",
    b'{"sensor_id": "\\ud800", "timestamp": 1767225600000, "value": 1.0}',
    b'{"sensor_id": "s9", "timestamp": 1767225600000, "value": 1.0} trailing',
    signed_marker("v2"),
    CONTROL_PREFIX + b'{"type": "model", "version": "v3"}',  # unsigned: bad_control
    b"",
    None,
]


def scenario(out_path: str) -> None:
    """Decode mixed input into key groups and run every group through the windows and
    detectors (tumbling on the specialised loop, session on the general one), with
    snapshots and restores on the way; pickle everything that came out."""
    from connectors.base import RawRecord
    from flows import IMPLEMENTATION
    from flows.decode import Decoder
    from flows.logic import KeyGroupLogic
    from flows.models import Models
    from flows.settings import load_settings

    rng = random.Random(11)
    batches = []
    for b in range(40):
        batch = []
        for i in range(250):
            n = b * 250 + i
            r = rng.random()
            if r < 0.9:
                ts = START_MS + n * 400 + rng.randrange(-30_000, 30_000)
                if rng.random() < 0.02:
                    ts -= 600_000  # late
                if rng.random() < 0.005:
                    ts += 10 * 86_400_000  # future
                ts -= ts % 1000  # a coarse grid puts records exactly on window bounds
                rec = {
                    "sensor_id": f"s{rng.randrange(30)}",
                    "timestamp": ts,
                    "value": rng.gauss(5, 1) + (40 if rng.random() < 0.01 else 0),
                }
                if rng.random() < 0.3:
                    rec["tenant_id"] = "t"
                v = json.dumps(rec).encode()
            elif r < 0.95:
                v = rng.choice(BAD_RECORDS)[0]
            else:
                v = rng.choice(_ODD)
                if v and v.startswith(CONTROL_PREFIX) and b < 30:
                    v = b"{}"  # a model switch leaves the specialised loop: only late on
            batch.append(RawRecord(v, "kafka:in", n % 3, n))
        batches.append(batch)
    results: dict[str, list] = {"impl": [IMPLEMENTATION]}
    for window, detector in (("tumbling", "ensemble"), ("session", "mad")):
        s = load_settings(
            {
                "AD_WINDOW": window,
                "AD_WINDOW_SIZE": "10s",
                "AD_SESSION_GAP": "5s",
                "AD_ALLOWED_LATENESS": "2s",
                "AD_EMIT": "all",
                "AD_DETECTOR": detector,
            }
        )
        models = Models(s.detector, s.detector_params)
        dec = Decoder("json", max_bytes=256, control_key=KEY)
        groups: dict[str, KeyGroupLogic] = {}
        out: list = []
        cache: dict[str, str] = {}
        for k, batch in enumerate(batches):
            parts, bad = dec.decode_grouped(batch, 4, cache)
            out.extend(("dlq", b) for b in bad)
            for g in sorted(parts):
                lg = groups.get(g) or KeyGroupLogic(s, models, None)
                items, _ = lg.on_batch([parts[g]])
                out.extend(items)
                groups[g] = KeyGroupLogic(s, models, lg.snapshot()) if k % 7 == 3 else lg
        for g in sorted(groups):
            out.extend(groups[g].on_eof()[0])
        results[window] = [(k, rec.key, rec.value) for k, (_key, rec) in out]
    Path(out_path).write_bytes(pickle.dumps(results))


def _run(tmp: Path, compiled: bool) -> dict:
    out = tmp / f"out-{compiled}.pkl"
    env = {**os.environ, "AD_COMPILED": "1" if compiled else "0"}
    code = f"import sys; from tests.flows.test_compiled import scenario; scenario({str(out)!r})"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, check=True, timeout=300)
    return pickle.loads(out.read_bytes())


def test_compiled_modules_equal_the_source(tmp_path: Path) -> None:
    from flows import COMPILED, IMPLEMENTATION

    assert set(IMPLEMENTATION.values()) == {"compiled"}, (
        f"compiled modules not built ({IMPLEMENTATION}): run `make install` (it needs a C compiler)"
    )
    compiled, interpreted = _run(tmp_path, True), _run(tmp_path, False)
    assert compiled.pop("impl") == [dict.fromkeys(COMPILED, "compiled")]
    assert interpreted.pop("impl") == [dict.fromkeys(COMPILED, "interpreted")]
    for window in ("tumbling", "session"):
        got = compiled[window]
        kinds = {k for k, *_ in got}
        reasons = {json.loads(v)["reason"] for k, _key, v in got if k == "dlq"}
        assert kinds == {"alert", "dlq"} and len(got) > 1000
        assert {"late", "future", "undecodable", "bad_type"} <= reasons
        assert got == interpreted[window], window
