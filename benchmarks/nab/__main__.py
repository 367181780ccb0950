"""Entry point: ``python -m benchmarks.nab --data DIR --out DIR [--json PATH]``."""

from benchmarks.nab.harness import main

if __name__ == "__main__":
    main()
