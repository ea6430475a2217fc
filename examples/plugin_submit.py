"""Submit a many-body record to a QCFractal server running the qcmb-fractal plugin, wait, print the results.

    export QCPORTAL_ADDRESS=http://127.0.0.1:7777 QCPORTAL_USERNAME=alice   # a user with the submit role
    python examples/plugin_submit.py            # asks for the password, or reads $QCPORTAL_PASSWORD

Credentials come as QCPortal users give them: QCPORTAL_ADDRESS, QCPORTAL_USERNAME with QCPORTAL_PASSWORD
(or a prompt), QCPORTAL_API_TOKEN instead of both, or an entry of qcportal_config.yaml (working directory,
then ~/.qca) named as the argument: ``python examples/plugin_submit.py myserver``.
"""

import json
import sys
import time
from pathlib import Path

from qcportal.molecules import Molecule

from qcmb_fractal.errors import InputError
from qcmb_fractal.plugin.client import (
    QCMBNotServedError,
    QCMBPermissionError,
    add_qcmb_manybodys,
    connect,
    get_qcmb_manybodys,
    qcmb_level_status,
    simple_specification,
)

# The water trimer of the NWChem example, read from that example's input.
WATER_TRIMER = Molecule(**json.loads((Path(__file__).parent / "water3-nwchem-hf-cp.json").read_text())["molecule"])


def main(server: str | None) -> None:
    client = connect(server)
    spec = simple_specification(program="xtb", method="gfn2-xtb", driver="gradient", max_nbody=3, mode="eager")
    _, (record_id,) = add_qcmb_manybodys(client, WATER_TRIMER, spec, compute_tag="*")
    print(f"submitted qcmb_manybody record {record_id}", flush=True)
    while (record := get_qcmb_manybodys(client, record_id)).status not in ("complete", "error"):
        levels = qcmb_level_status(client, record_id)
        done = ", ".join(f"{s.level}-body {s.complete}/{s.total}" for s in levels)
        waiting = {s.waiting_reason for s in levels if s.waiting_reason}
        print(f"  {record.status.value}: {done}" + (f" ({'; '.join(sorted(waiting))})" if waiting else ""), flush=True)
        time.sleep(2)
    if record.status == "error":
        sys.exit(record.error["error_message"])
    result = record.result  # QCManyBody's ManyBodyResult
    print(result.stdout)
    print("interaction energy (Eh):", result.properties.nocp_corrected_interaction_energy)
    print("gradient (Eh/bohr):\n", result.properties.return_gradient)
    print("cluster -> singlepoint record:", record.cluster_singlepoints)


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else None)
    except (InputError, QCMBPermissionError, QCMBNotServedError) as err:
        sys.exit(f"error: {err}")
