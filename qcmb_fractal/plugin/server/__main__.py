"""``python -m qcmb_fractal.plugin.server`` is ``qcmb-fractal-server``."""

import sys

from qcmb_fractal.plugin.server.cli import main

if __name__ == "__main__":
    sys.exit(main())
