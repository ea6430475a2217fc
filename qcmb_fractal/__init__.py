"""Parallel many-body expansions: plan with QCManyBody, drive level by level, execute anywhere."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("qcmb-fractal")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from qcmb_fractal.errors import InputError

__all__ = ["InputError", "__version__"]
