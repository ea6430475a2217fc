"""Skip markers for tests that need a real QC program that this machine may lack."""

import importlib.util
import shutil

import pytest

needs_nwchem = pytest.mark.skipif(shutil.which("nwchem") is None, reason="NWChem is not installed (apt nwchem)")
needs_xtb = pytest.mark.skipif(importlib.util.find_spec("xtb") is None, reason="xtb-python is not installed (pip xtb)")
