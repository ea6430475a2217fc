"""Plain QCFractal tools on a database of the plugin: the installed package loads the plugin into every process.

qcmb-fractal is installed into fresh virtual environments on top of this interpreter's packages, from a
wheel (as ``pip install 'qcmb-fractal[server]'``) and editable (as ``pip install -e .``, what CI and the
README do). Both install ``qcmb_fractal_autoload.pth``. Then QCFractal's own ``qcfractal-server`` script,
run by the wheel environment's Python, is the operator's command: ``start`` (API and job-runner processes
spawned anew), ``upgrade-db`` and ``user add``, with ``qcfractal-compute-manager`` computing. The processes
keep this checkout first on their path, so coverage sees the code they run; the wheel's own copy is
checked once without it.
"""

import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from qcmanybody.v2.computer import ManyBodyComputer
from qcportal.record_models import RecordStatusEnum

import qcmb_fractal
from qcmb_fractal.plugin.client import (
    QCMBNotServedError,
    add_qcmb_manybodys,
    qcmb_level_status,
    simple_specification,
)
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import drop_database, plain_database, portal_molecule, wait_for_record
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.servers import (
    ADMIN,
    ADMIN_PASSWORD,
    MANAGER,
    MANAGER_PASSWORD,
    OUTAGE_TOLERANT_MAX_MISSED,
    Manager,
    Server,
    wait_until,
)

pytestmark = [needs_xtb, pytest.mark.slow]

DB_NAME = "qcmb_plugin_plain_qcfractal"
SOURCE = Path(qcmb_fractal.__file__).parent.parent
KEPT_OUT = {"QCMB_FRACTAL_AUTOLOAD": "0"}
XTB = {"program": "xtb", "method": "gfn2-xtb"}
PROBE = """
import sys
startup = sorted(m for m in sys.modules if m.startswith(("qcmb", "_qcmb", "qcfractal", "sqlalchemy", "pydantic")))
import qcfractal.config, qcfractal.db_socket.socket as socket, qcmb_fractal, _qcmb_fractal_autoload
print(startup, "qcmb_fractal" in qcfractal.config.FractalConfig.model_fields,
      getattr(socket.SQLAlchemySocket.__init__, "_qcmb_hook", False), qcmb_fractal.__file__)
"""


def install(tmp: Path, *, editable: bool) -> Path:
    """A virtual environment seeing this interpreter's packages, with qcmb-fractal installed; its python."""
    source = tmp / "source"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "README.md", "_qcmb_fractal_autoload.py"):
        shutil.copy(SOURCE / name, source)
    shutil.copytree(SOURCE / "qcmb_fractal", source / "qcmb_fractal", ignore=shutil.ignore_patterns("__pycache__"))
    venv.create(tmp / "venv", system_site_packages=True)  # this interpreter's pip, QCFractal, ...
    python = tmp / "venv" / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "--quiet", "--no-deps"] + (["-e"] if editable else [])
    subprocess.run([*pip, str(source)], check=True, env=without_pythonpath())
    return python


def without_pythonpath() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def wheel_python(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("wheel"), editable=False)


@pytest.mark.parametrize("editable", [False, True], ids=["wheel", "editable"])
def test_installed_package_loads_the_plugin_where_qcfractal_loads_and_nowhere_else(editable, wheel_python, tmp_path):
    python = install(tmp_path, editable=True) if editable else wheel_python
    site = next(python.parent.parent.glob("lib/python*/site-packages"))
    assert (site / "qcmb_fractal_autoload.pth").read_text().startswith("import sys; exec(")
    probe = subprocess.run(
        [str(python), "-c", PROBE], capture_output=True, text=True, check=True, env=without_pythonpath(), cwd=tmp_path
    )  # not from this checkout: `python -c` puts the working directory first on the path
    startup, section, hooked, package = probe.stdout.rsplit(" ", 3)
    assert startup == "['_qcmb_fractal_autoload']"  # Python's start-up imports nothing else of ours or QCFractal's
    assert (section, hooked) == ("True", "True")
    expected = tmp_path / "source" if editable else site
    assert Path(package.strip()).is_relative_to(expected)


def test_plain_qcfractal_server_serves_plugin_records_and_refuses_what_it_cannot_serve(wheel_python, tmp_path):
    plain_database(DB_NAME)
    found = shutil.which("qcfractal-server", path=os.path.dirname(sys.executable)) or shutil.which("qcfractal-server")
    script = Path(found)  # QCFractal's console script, a Python file the venv's python can run
    assert "python" in script.read_text().splitlines()[0], f"{script} is not QCFractal's Python console script"
    # The manager must outlive the server's restart below: it gives up after this many missed heartbeats.
    server = Server(
        tmp_path / "server",
        DB_NAME,
        command=(str(wheel_python), script),
        env=dict(KEPT_OUT),
        heartbeat_max_missed=OUTAGE_TOLERANT_MAX_MISSED,
    )
    server.write_config()
    manager = None
    try:
        # Without the plugin, on a database that never had it: plain QCFractal, and the client says so.
        for user, role, password in [(ADMIN, "admin", ADMIN_PASSWORD), (MANAGER, "compute", MANAGER_PASSWORD)]:
            added = server.run("user", "add", user, "--role", role, "--password", password)
            assert added.returncode == 0, added.stderr
        server.start()
        mol = portal_molecule(water_cluster(3, shift=4.0))
        spec = simple_specification(**XTB, max_nbody=2, mode="levels")
        with pytest.raises(QCMBNotServedError, match=r"does not serve qcmb_manybody \(is the plugin loaded\?\)"):
            add_qcmb_manybodys(server.admin(), mol, spec)
        server.stop()

        # The plugin loads itself now, and QCFractal's own start refuses the database until upgrade-db.
        server.env = {}
        refused = server.run("start")
        assert refused.returncode != 0
        assert "table qcmb_manybody_record is missing" in refused.stdout + refused.stderr
        assert "qcfractal-server upgrade-db" in refused.stdout + refused.stderr
        for _ in range(2):  # idempotent
            upgraded = server.run("upgrade-db")
            assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr

        server.start()
        manager = Manager(tmp_path / "managers", server, "qcmb-plain-qcfractal")
        manager.start()
        client = server.admin()
        _, (rid,) = add_qcmb_manybodys(client, mol, spec)

        def monomers_done() -> bool:
            levels = qcmb_level_status(client, rid)
            return bool(levels) and levels[0].complete == 3

        wait_until(monomers_done, 180, "the monomers", server.log)
        server.kill()  # SIGKILL mid-service: the database now holds a running qcmb_manybody record

        server.start()
        client = server.admin()
        dimer, eager = portal_molecule(water_cluster(2, shift=5.0)), simple_specification(**XTB, max_nbody=2)
        _, (new_rid,) = add_qcmb_manybodys(client, dimer, eager)
        _, (sp_id,) = client.add_singlepoints([dimer], "xtb", "energy", "gfn1-xtb", None)  # plain QCFractal work
        for record_id, molecule, specification in [(rid, mol, spec), (new_rid, dimer, eager)]:
            record = wait_for_record(client, record_id)
            assert record.status == RecordStatusEnum.complete, record.error
            reference = ManyBodyComputer.from_manybodyinput(validated_input(molecule, specification))
            for n in (1, 2):
                key = f"nocp_corrected_total_energy_through_{n}_body"
                assert abs(record.properties[key] - getattr(reference.properties, key)) < 1e-9
        singlepoint = wait_for_record(client, sp_id)
        assert singlepoint.status == RecordStatusEnum.complete
        gfn1 = simple_specification(program="xtb", method="gfn1-xtb", max_nbody=2)  # MBE(2) of a dimer: its energy
        gfn1_dimer = ManyBodyComputer.from_manybodyinput(validated_input(dimer, gfn1)).properties
        dimer_energy = gfn1_dimer.nocp_corrected_total_energy_through_2_body
        assert abs(singlepoint.properties["return_energy"] - dimer_energy) < 1e-9
        manager.stop()
        server.stop()

        # Kept out again, QCFractal refuses the plugin's database instead of serving it half.
        server.env = dict(KEPT_OUT)
        refused = server.run("start")
        assert refused.returncode != 0
        output = refused.stdout + refused.stderr
        assert "holds the tables of qcmb-fractal's qcmb_manybody record type" in output
        assert "QCMB_FRACTAL_AUTOLOAD=0" in output
    finally:
        if manager is not None:
            manager.stop()
        if server.proc is not None:
            server.kill()
        drop_database(DB_NAME)
