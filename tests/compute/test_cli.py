"""``qcmb-fractal-compute``'s command line: a manager.yaml it cannot serve is refused in one line, before the
server hears of it (no server runs here: the refusals come first)."""

import logging
import subprocess
import sys

import pytest
import yaml

from qcmb_fractal.compute.cli import main

SERVER = {"fractal_uri": "http://127.0.0.1:9", "username": "node", "password": "secret-password"}
LOCAL = {"type": "local", "max_workers": 1, "cores_per_worker": 1, "memory_per_worker": 1, "compute_tags": ["*"]}
SLURM = {
    "type": "slurm",
    "walltime": "01:00:00",
    "workers_per_node": 2,
    "max_nodes": 1,
    "cores_per_worker": 1,
    "memory_per_worker": 1,
    "compute_tags": ["*"],
}


@pytest.fixture(autouse=True)
def root_logger():
    """main() configures the root logger, as a command does; give the next test back its own."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield
    root.handlers, root.level = saved[0], saved[1]


def write(tmp_path, **changes) -> str:
    config = {"cluster": "test", "base_folder": str(tmp_path), "server": SERVER, "executors": {"cpu": LOCAL}}
    path = tmp_path / "manager.yaml"
    path.write_text(yaml.safe_dump({**config, **changes}))
    return str(path)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"executors": {"cpu": LOCAL, "cluster": SLURM}},
            "executor 'cluster' has type 'slurm'; qcmb-fractal-compute runs only type 'local' executors",
        ),
        ({"executors": {"cpu": {**LOCAL, "max_workers": "two"}}}, "manager.yaml: executors.cpu.local.max_workers:"),
    ],
    ids=["slurm", "bad-field"],
)
def test_what_it_cannot_serve_is_refused_in_one_line(tmp_path, capsys, changes, message):
    assert main(["--config", write(tmp_path, **changes)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("qcmb-fractal-compute: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_missing_configuration_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nowhere.yaml")]) == 2
    assert "No such file or directory" in capsys.readouterr().err


def test_module_runs_as_a_command():
    done = subprocess.run(
        [sys.executable, "-m", "qcmb_fractal.compute", "--help"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "--config" in done.stdout and "qcfractal-compute-manager" in done.stdout
