"""Skip markers for tests that need a real QC program that a developer's machine may lack.

Under CI (``CI`` set) nothing is skipped: scripts/test.sh installs every program, so a missing one
must fail the run instead of hiding behind a skip.
"""

import importlib.util
import os
import shutil

import pytest

_LOCAL = not os.environ.get("CI")

needs_nwchem = pytest.mark.skipif(
    _LOCAL and shutil.which("nwchem") is None, reason="NWChem is not installed (apt nwchem; scripts/test.sh does it)"
)
needs_xtb = pytest.mark.skipif(
    _LOCAL and importlib.util.find_spec("xtb") is None, reason="xtb-python is not installed (pip install '.[xtb]')"
)
