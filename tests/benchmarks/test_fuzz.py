"""A bounded run of the fuzz harness (benchmarks/fuzz.py) finds no crash, and the
harness does see an exception that escapes a decoder."""

from __future__ import annotations

import subprocess

from tests.flowrun import PY, ROOT, flow_env


def test_a_bounded_fuzz_run_finds_no_crash() -> None:
    proc = subprocess.run(
        [PY, "-m", "benchmarks.fuzz", "--inputs", "30000", "--seed", "7"],
        cwd=ROOT,
        env=flow_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "fuzz: 30,000 inputs, 0 crashes" in proc.stdout


def test_the_harness_reports_an_exception_that_escapes_a_decoder() -> None:
    script = (
        "from benchmarks import fuzz\n"
        "from flows import decode\n"
        "def deep(data):\n"
        "    raise RecursionError('too deep')\n"
        "decode._json_loads = deep  # a JSON library that fails in an unexpected way\n"
        "decode.Decoder.decode_one = decode.Decoder._decode_one  # without its safety net\n"
        "fuzz.one_input(bytes([0]) + b'{}')\n"
        "print(sorted(fuzz.STATS.crashes))\n"
    )
    proc = subprocess.run(
        [PY, "-c", script],
        cwd=ROOT,
        env=flow_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "json: RecursionError" in proc.stdout
