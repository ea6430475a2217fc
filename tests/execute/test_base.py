"""The backend interface's defaults and the by-name lookup the CLI uses."""

import argparse
from concurrent.futures import Future

import pytest

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute import Backend, backend_class, backend_modules
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.plan import FragmentTask


class FakeRecordingBackend(Backend):
    name = "fake"

    def __init__(self) -> None:
        self.shutdowns: list[tuple[bool, bool]] = []

    def submit(self, task: FragmentTask) -> Future:
        fut: Future = Future()
        fut.set_result(task.hash)
        return fut

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self.shutdowns.append((wait, cancel_futures))


def test_lookup_by_name() -> None:
    assert "local" in backend_modules()
    assert backend_class("local") is LocalBackend
    with pytest.raises(InputError, match=r"unknown backend 'nope'; choose one of .*local"):
        backend_class("nope")


def test_defaults() -> None:
    parser = argparse.ArgumentParser()
    FakeRecordingBackend.add_arguments(parser.add_argument_group("fake"))
    backend = FakeRecordingBackend.from_arguments(parser.parse_args([]))
    assert backend.capacity is None
    backend.start(None)  # type: ignore[arg-type]
    task = FragmentTask(hash="h", mc="m", real=(1,), basis=(1,), level=1, program="p", cost=1.0, labels=("l",))
    assert [f.result() for f in backend.submit_many([task, task])] == ["h", "h"]
    Backend.shutdown(backend)  # the base class has nothing to release


def test_context_manager_cancels_on_error() -> None:
    with FakeRecordingBackend() as backend:
        pass
    assert backend.shutdowns == [(True, False)]
    with pytest.raises(KeyboardInterrupt), FakeRecordingBackend() as backend:
        raise KeyboardInterrupt
    assert backend.shutdowns == [(False, True)]
