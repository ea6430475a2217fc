"""Fixtures for tests that run worker code in this process (``run_fragment`` without a pool)."""

import logging
import multiprocessing
from collections.abc import Iterator

import pytest

from qcmb_fractal.execute import worker as worker_module


@pytest.fixture
def isolated_worker(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """init_worker sets thread variables, the process name, logging and the worker's globals; keep them from
    leaking into other tests."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMPI_MCA_pml"):
        monkeypatch.setenv(var, "1" if var != "OMPI_MCA_pml" else "ob1")
    name = multiprocessing.current_process().name
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    multiprocessing.current_process().name = name
    root.handlers[:], root.level = handlers, level
    worker_module._BUILDER = worker_module._CONFIG = None
    worker_module._SOURCES.clear()
