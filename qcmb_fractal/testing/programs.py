"""Skip markers for tests that need a real QC program that a developer's machine may lack.

Under CI (``CI`` set) nothing is skipped: scripts/test.sh installs every program, so a missing one
must fail the run instead of hiding behind a skip. The one exception is xtb on Python >= 3.12, for which
xtb-python publishes no wheels, so pip cannot install it there.
"""

import importlib.util
import os
import shutil
import sys

import pytest

_LOCAL = not os.environ.get("CI")

needs_nwchem = pytest.mark.skipif(
    _LOCAL and shutil.which("nwchem") is None, reason="NWChem is not installed (apt nwchem; scripts/test.sh does it)"
)
_XTB_INSTALLABLE = sys.version_info < (3, 12)

needs_xtb = pytest.mark.skipif(
    (_LOCAL or not _XTB_INSTALLABLE) and importlib.util.find_spec("xtb") is None,
    reason="xtb-python is not installed (pip install '.[xtb]'; it has wheels for Python <= 3.11 only)",
)
