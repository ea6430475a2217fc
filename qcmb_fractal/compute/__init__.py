"""``qcmb-fractal-compute``: a QCFractal 0.71 compute manager with warm workers (see docs/compute-manager.md)."""

from qcmb_fractal.compute.manager import WarmComputeManager, check_config

__all__ = ["WarmComputeManager", "check_config"]
