"""The real multi-process server: ``qcmb-fractal-server start`` plus ``qcfractal-compute-manager``.

One test on purpose (each server start costs seconds): it refuses to start on a database the plugin was
never installed into, installs into that existing database (twice: idempotent), runs a levels-mode
record, SIGKILLs the whole server mid-service, starts it again and gets the same numbers as QCManyBody.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from qcmanybody.v2.computer import ManyBodyComputer
from qcportal import PortalClient
from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.plugin.client import add_qcmb_manybodys, qcmb_level_status, simple_specification
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import (
    PG_HOST,
    PG_PASSWORD,
    PG_PORT,
    PG_ROLE,
    checkout_db_name,
    drop_database,
    portal_molecule,
    wait_for_record,
)
from qcmb_fractal.testing.molecules import water_cluster

DB_NAME = "qcmb_plugin_cli"
SERVER = [sys.executable, "-m", "qcmb_fractal.plugin.server"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_configs(tmp_path: Path, port: int) -> tuple[Path, Path]:
    server = {
        "base_folder": str(tmp_path / "server"),
        "loglevel": "INFO",
        "service_frequency": 1,
        "heartbeat_frequency": 5,
        "enable_security": False,
        "database": {
            "host": PG_HOST,
            "port": PG_PORT,
            "username": PG_ROLE,
            "password": PG_PASSWORD,
            "database_name": checkout_db_name(DB_NAME),
            "own": False,
        },
        "api": {
            "host": "127.0.0.1",
            "port": port,
            "secret_key": secrets.token_urlsafe(32),
            "jwt_secret_key": secrets.token_urlsafe(32),
        },
    }
    manager = {
        "base_folder": str(tmp_path / "manager"),
        "cluster": "qcmb_plugin_test",
        "loglevel": "INFO",
        "update_frequency": 1,
        "update_frequency_jitter": 0,
        "parsl_run_dir": str(tmp_path / "manager" / "parsl"),
        "server": {"fractal_uri": f"http://127.0.0.1:{port}", "verify": False},
        "executors": {
            "local": {
                "type": "local",
                "max_workers": 2,
                "cores_per_worker": 1,
                "memory_per_worker": 1,
                "compute_tags": ["*"],
                "scratch_directory": str(tmp_path / "manager" / "scratch"),
            }
        },
    }
    for sub in ("server", "manager/parsl", "manager/scratch"):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
    server_cfg, manager_cfg = tmp_path / "server.yaml", tmp_path / "manager.yaml"
    server_cfg.write_text(yaml.safe_dump(server))
    manager_cfg.write_text(yaml.safe_dump(manager))
    return server_cfg, manager_cfg


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    # Own session, so the server's spawned API and job-runner processes can be killed as one group.
    return subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)


def connect(uri: str, timeout: float = 90.0) -> PortalClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return PortalClient(uri)
        except Exception:
            assert time.monotonic() < deadline, f"server at {uri} did not come up"
            time.sleep(0.5)


@pytest.mark.slow
def test_real_server_refuses_installs_survives_sigkill_and_computes(tmp_path):
    # An existing plain QCFractal database, made by a process that never imported the plugin (QCFractal
    # creates the tables of every imported model).
    code = f"from qcmb_fractal.testing.fractal import fresh_database; fresh_database({DB_NAME!r}, plugin=False)"
    subprocess.run([sys.executable, "-c", code], check=True)
    port = free_port()
    server_cfg, manager_cfg = write_configs(tmp_path, port)

    refused = subprocess.run([*SERVER, "start", "--config", str(server_cfg)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "table qcmb_manybody_record is missing" in refused.stderr
    assert "upgrade-db" in refused.stderr

    for _ in range(2):
        upgraded = subprocess.run([*SERVER, "upgrade-db", "--config", str(server_cfg)], capture_output=True, text=True)
        assert upgraded.returncode == 0, upgraded.stderr + upgraded.stdout
        assert "qcmb-fractal plugin ready" in upgraded.stdout

    server = start([*SERVER, "start", "--config", str(server_cfg)], tmp_path / "server.log")
    manager = None
    try:
        client = connect(f"http://127.0.0.1:{port}")  # the manager gives up at once if the server is not up yet
        manager_cmd = [shutil.which("qcfractal-compute-manager"), "--config", str(manager_cfg)]
        manager = start(manager_cmd, tmp_path / "manager.log")
        mol = portal_molecule(water_cluster(3, shift=4.0))
        spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, mode="levels")
        _, (rid,) = add_qcmb_manybodys(client, mol, spec)

        deadline = time.monotonic() + 120
        while not (levels := qcmb_level_status(client, rid)) or levels[0].complete < 3:
            assert time.monotonic() < deadline, "the monomers never finished"
            time.sleep(0.3)
        kill_group(server)  # mid-service: monomers done, dimers handed out or about to be

        server = start([*SERVER, "start", "--config", str(server_cfg)], tmp_path / "server.log")
        client = connect(f"http://127.0.0.1:{port}")
        record = wait_for_record(client, rid)
        assert record.status == RecordStatusEnum.complete, record.error
        reference = ManyBodyComputer.from_manybodyinput(validated_input(mol, spec))
        for n in (1, 2):
            key = f"nocp_corrected_total_energy_through_{n}_body"
            assert abs(record.properties[key] - getattr(reference.properties, key)) < 1e-9
    finally:
        if manager is not None:
            kill_group(manager, signal.SIGTERM)
        kill_group(server, signal.SIGTERM)
        drop_database(DB_NAME)
