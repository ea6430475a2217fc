"""Resource selection from what the machine has (cores and free memory injected, so tests are exact)."""

from pathlib import Path

import pytest

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute.resources import available_cores, check_disk, select_resources


def test_defaults_use_every_core_one_each() -> None:
    res = select_resources(total_cores=8, available_gib=64)
    assert (res.workers, res.ncores, res.memory, res.warnings) == (8, 1, 6.7, [])


def test_memory_bounds_the_default_worker_count() -> None:
    res = select_resources(total_cores=16, available_gib=4.0)  # 3.6 usable / (0.5 + 0.5) -> 3 workers
    assert (res.workers, res.ncores) == (3, 5)
    assert res.memory == 0.7  # 3.6 / 3 - 0.5


def test_cores_per_task_divide_the_machine() -> None:
    res = select_resources(ncores=4, total_cores=8, available_gib=64)
    assert (res.workers, res.ncores) == (2, 4)
    assert res.memory == 8.0  # capped


def test_explicit_workers_and_memory() -> None:
    res = select_resources(2, 3.0, total_cores=8, available_gib=64)
    assert (res.workers, res.ncores, res.memory) == (2, 4, 3.0)


def test_too_many_workers_shrink_with_a_warning() -> None:
    res = select_resources(10, 1.5, total_cores=16, available_gib=8.0)  # 7.2 // 2.0 = 3
    assert res.workers == 3 and res.ncores == 5
    assert len(res.warnings) == 1 and "using 3 workers" in res.warnings[0]


@pytest.mark.parametrize(
    ("args", "fix"),
    [
        ({"workers": 0}, "--workers must be between 1 and 1024"),
        ({"workers": 5000}, "--workers must be between 1 and 1024"),
        ({"memory": 100.0}, "give a value between 0.05 and the free memory"),
        ({"memory": 0.01}, "give a value between 0.05"),
        ({"ncores": 3}, "--cores-per-task must be between 1 and 2"),
    ],
)
def test_impossible_requests_say_what_is_possible(args: dict, fix: str) -> None:
    with pytest.raises(InputError, match=fix):
        select_resources(**args, total_cores=2, available_gib=4.0)


def test_machine_probes() -> None:
    assert available_cores() >= 1
    res = select_resources()
    assert res.workers >= 1 and res.memory >= 0.5


def test_check_disk(tmp_path: Path) -> None:
    check_disk(tmp_path, 1)
    with pytest.raises(InputError, match="free space or point --scratch elsewhere"):
        check_disk(tmp_path, 2**62)
