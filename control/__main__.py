"""``python -m control`` is ``adctl``."""

import sys

from control.cli import main

sys.exit(main())
