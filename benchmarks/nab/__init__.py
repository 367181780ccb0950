"""NAB benchmark harness and scorer (``python -m benchmarks.nab --help``)."""
