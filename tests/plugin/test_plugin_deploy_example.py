"""examples/plugin_deploy.sh, the README's operator path, run as written: security on, users and roles, a
compute manager with its own credentials, a record submitted by a user with the submit role."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from qcmanybody.v2.computer import ManyBodyComputer
from qcportal.molecules import Molecule

import qcmb_fractal
from qcmb_fractal.plugin.client import simple_specification
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import checkout_db_name, drop_database, ensure_login_role
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.servers import _free_port

pytestmark = [needs_xtb, pytest.mark.slow]

EXAMPLES = Path(qcmb_fractal.__file__).parent.parent / "examples"
DB_NAME = "qcmb_plugin_deploy_example"


def test_operator_path_of_the_readme_runs_with_security_on(tmp_path):
    ensure_login_role()
    drop_database(DB_NAME)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(sys.path),
        "WORK": str(tmp_path),
        "PORT": str(_free_port()),
        "DB_NAME": checkout_db_name(DB_NAME),
    }
    try:
        done = subprocess.run(
            ["bash", str(EXAMPLES / "plugin_deploy.sh")], capture_output=True, text=True, env=env, timeout=900
        )
    finally:
        drop_database(DB_NAME)
    logs = "".join(f"\n--- {p.name}\n{p.read_text()[-3000:]}" for p in tmp_path.glob("*.log"))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs
    out = done.stdout
    assert "enable_security: true" in (tmp_path / "server.yaml").read_text()
    for user in ("admin", "alice", "node1"):
        assert f"Created user {user}" in out
    assert "qcmb-fractal plugin ready in postgresql://" in out
    assert "Traceback" not in done.stderr

    (energy,) = re.findall(r"interaction energy \(Eh\): (\S+)", out)
    trimer = Molecule(**json.loads((EXAMPLES / "water3-nwchem-hf-cp.json").read_text())["molecule"])
    spec = simple_specification(program="xtb", method="gfn2-xtb", max_nbody=3)
    reference = ManyBodyComputer.from_manybodyinput(validated_input(trimer, spec))
    assert abs(float(energy) - reference.properties.nocp_corrected_interaction_energy) < 1e-9
