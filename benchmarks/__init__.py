"""Benchmarks (not timed tests): ``python -m benchmarks.nab`` runs the NAB harness."""
