"""``python3 -m qcmb_fractal.compute --config manager.yaml``."""

import sys

from qcmb_fractal.compute.cli import main

if __name__ == "__main__":
    sys.exit(main())
