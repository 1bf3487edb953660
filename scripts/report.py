#!/usr/bin/env python
"""Thin wrapper of the ``analogtrain-report`` command (for checkouts without the console script):

    python scripts/report.py --experiment sweep_asym_skew --metric test/acc
"""

import sys

from analogtrain.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
