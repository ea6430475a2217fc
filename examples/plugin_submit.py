"""Submit a many-body record to a QCFractal server running the qcmb-fractal plugin, wait, print the results.

python examples/plugin_submit.py http://127.0.0.1:7777
"""

import sys
import time

from qcportal import PortalClient
from qcportal.molecules import Molecule

from qcmb_fractal.plugin.client import add_qcmb_manybodys, get_qcmb_manybodys, qcmb_level_status, simple_specification

WATER_TRIMER = Molecule.from_data(
    """
    O      -2.76373224  -1.24377706  -0.15444566
    H      -1.12357791  -2.06227970  -0.05243799
    H      -3.80792362  -2.08705525   1.06090407
    --
    O       2.46924614  -1.75437739  -0.17092884
    H       3.76368260  -2.21425403   1.00846104
    H       2.30598330   0.07098445  -0.03942473
    --
    O       0.29127930   3.00875625   0.20308515
    H      -1.21253048   1.95820900   0.10303324
    H       0.10002049   4.24958115  -1.10222079
    units bohr
    """
)


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
