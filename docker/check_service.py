"""docker/test.sh's check of a running stack: anonymous users are refused, the admin's many-body record completes,
and its numbers equal a local qcmb-fractal run of the same input (1e-9 Eh).

Runs inside the compute image (it has QCPortal, qcmb-fractal and NWChem):
    python check_service.py URI USERNAME PASSWORD_FILE           # submit, wait, compare
    python check_service.py URI USERNAME PASSWORD_FILE RECORD_ID # after a restart: the record is still there
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from qcportal import PortalClient
from qcportal.client_base import PortalRequestError
from qcportal.molecules import Molecule

from qcmb_fractal.errors import InputError
from qcmb_fractal.plugin.client import add_qcmb_manybodys, get_qcmb_manybodys, qcmb_level_status, simple_specification
from qcmb_fractal.testing.molecules import water_trimer

TIMEOUT = 900.0


def still_there(uri: str, username: str, password_file: str, record_id: int) -> None:
    client = PortalClient(uri, username=username, password=Path(password_file).read_text().strip())
    record = get_qcmb_manybodys(client, record_id)
    if record.status != "complete" or record.result is None:
        sys.exit(f"FAIL: after the restart record {record_id} is {record.status.value}")
    print(f"after the restart: record {record_id} complete, {len(record.cluster_singlepoints)} clusters")


def main(uri: str, username: str, password_file: str) -> None:
    trimer = Molecule(**water_trimer().convert_v(1).model_dump())  # QCPortal's own molecule class
    spec = simple_specification(
        program="nwchem", method="hf", basis="sto-3g", bsse=["nocp", "cp"], max_nbody=3, mode="eager"
    )
    try:
        add_qcmb_manybodys(PortalClient(uri), trimer, spec)
        sys.exit("FAIL: an anonymous user could submit")
    except (PortalRequestError, InputError) as err:  # the client turns 4xx answers into InputError
        print(f"anonymous submission refused: {err}")

    client = PortalClient(uri, username=username, password=Path(password_file).read_text().strip())
    start = time.monotonic()
    _, (record_id,) = add_qcmb_manybodys(client, trimer, spec, compute_tag="*")
    print(f"submitted qcmb_manybody record {record_id}")
    while (record := get_qcmb_manybodys(client, record_id)).status not in ("complete", "error"):
        if time.monotonic() - start > TIMEOUT:
            sys.exit(f"FAIL: record {record_id} still {record.status.value} after {TIMEOUT:.0f} s")
        done = ", ".join(f"{s.level}-body {s.complete}/{s.total}" for s in qcmb_level_status(client, record_id))
        print(f"  {time.monotonic() - start:5.0f} s {record.status.value}: {done}", flush=True)
        time.sleep(5)
    elapsed = time.monotonic() - start
    if record.status == "error":
        sys.exit(f"FAIL: record {record_id} errored: {record.error['error_message']}")
    result = record.result
    print(f"record {record_id} complete in {elapsed:.1f} s after submission")

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "input.json").write_text(result.input_data.model_dump_json())
        subprocess.run(
            ["qcmb-fractal", "run", "input.json", "-o", "local.json", "--no-progress", "--no-checkpoint"],
            cwd=tmp,
            check=True,
        )
        local = json.loads((Path(tmp) / "local.json").read_text())["properties"]
    worst = 0.0
    for bsse in ("nocp", "cp"):
        for n in (1, 2, 3):
            key = f"{bsse}_corrected_total_energy_through_{n}_body"
            worst = max(worst, abs(getattr(result.properties, key) - local[key]))
    print(f"server record vs local run: largest difference {worst:.1e} Eh")
    if worst > 1e-9:
        sys.exit("FAIL: the server's numbers differ from a local run")
    print(f"RECORD_ID {record_id}")
    print(f"TIME_TO_RECORD {elapsed:.1f}")


if __name__ == "__main__":
    if len(sys.argv) > 4:
        still_there(*sys.argv[1:4], int(sys.argv[4]))
    else:
        main(*sys.argv[1:4])
