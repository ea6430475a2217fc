"""Submit a many-body record to a QCFractal server running the qcmb-fractal plugin, wait, print the results.

python examples/plugin_submit.py http://127.0.0.1:7777
"""

import json
import sys
import time
from pathlib import Path

from qcportal import PortalClient
from qcportal.molecules import Molecule

from qcmb_fractal.plugin.client import add_qcmb_manybodys, get_qcmb_manybodys, qcmb_level_status, simple_specification

# The water trimer of the NWChem example, read from that example's input.
WATER_TRIMER = Molecule(**json.loads((Path(__file__).parent / "water3-nwchem-hf-cp.json").read_text())["molecule"])


def main(uri: str) -> None:
    client = PortalClient(uri)
    spec = simple_specification(program="xtb", method="gfn2-xtb", driver="gradient", max_nbody=3, mode="eager")
    _, (record_id,) = add_qcmb_manybodys(client, WATER_TRIMER, spec, compute_tag="*")
    print(f"submitted qcmb_manybody record {record_id}")
    while (record := get_qcmb_manybodys(client, record_id)).status not in ("complete", "error"):
        done = ", ".join(f"{s.level}-body {s.complete}/{s.total}" for s in qcmb_level_status(client, record_id))
        print(f"  {record.status.value}: {done}")
        time.sleep(2)
    if record.status == "error":
        sys.exit(record.error["error_message"])
    result = record.result  # QCManyBody's ManyBodyResult
    print(result.stdout)
    print("interaction energy (Eh):", result.properties.nocp_corrected_interaction_energy)
    print("gradient (Eh/bohr):\n", result.properties.return_gradient)
    print("cluster -> singlepoint record:", record.cluster_singlepoints)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:7777")
