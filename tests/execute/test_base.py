"""The backend interface's defaults and the by-name lookup the CLI uses."""

import argparse
from concurrent.futures import Future

import pytest

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute import Backend, add_backend_arguments, backend_class, backend_names
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
    assert backend_names() == ["local", "mpi", "qcportal"]
    assert backend_class("local") is LocalBackend
    with pytest.raises(InputError, match=r"unknown backend 'nope'; choose one of .*local"):
        backend_class("nope")


def test_every_backend_option_is_in_help_once_and_own_options_in_their_group() -> None:
    parser = argparse.ArgumentParser()
    add_backend_arguments(parser)
    groups = {g.title: [a.option_strings[0] for a in g._group_actions] for g in parser._action_groups}
    assert groups["calculation resources (local and mpi backends)"] == [
        "--memory",
        "--cores-per-task",
        "--scratch",
        "--timeout",
        "--keep-stdout",
    ]
    assert groups["local backend"] == ["--workers"]
    assert groups["mpi backend"] == []  # its options are all shared; the group says which it reads
    assert "--server" in groups["qcportal backend"] and "--poll-interval" in groups["qcportal backend"]
    mpi = next(g for g in parser._action_groups if g.title == "mpi backend")
    assert (
        mpi.description.startswith("Under mpiexec -n N") and "Also reads --memory, --cores-per-task" in mpi.description
    )
    assert "mpi backend:\n  Under mpiexec -n N" in parser.format_help()
    args = parser.parse_args(["--memory", "2", "--timeout", "5", "--server", "http://h:7777"])
    assert (args.memory, args.timeout, args.server, args.workers) == (2.0, 5.0, "http://h:7777", None)


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
