"""Test-only fault injection: ``faultxtb``, QCEngine's xtb harness that fails on command.

QCFractal's compute manager runs every task in a fresh ``python3`` process, so a harness registered in
the test process never reaches it; ``fault_injection/sitecustomize.py`` registers this one in those
processes when ``QCMB_FAULT_DIR`` is set. ``<QCMB_FAULT_DIR>/plan.json`` says which calculations fail:
``{"natoms": [6], "failures": 1}`` fails the first attempt at every 6-atom molecule, ``"failures": -1``
fails them always (a broken node), and ``{}`` fails nothing (the node was fixed).
"""

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from qcelemental.models.v2 import AtomicInput, FailedOperation
from qcengine.programs.xtb import XTBHarness

FAULT_PROGRAM = "faultxtb"


def write_fault_plan(fault_dir: str | Path, natoms: list[int] | None = None, failures: int = 0) -> None:
    Path(fault_dir, "plan.json").write_text(json.dumps({"natoms": natoms or [], "failures": failures}))


class FaultXTBHarness(XTBHarness):
    _defaults: ClassVar[dict[str, Any]] = {**XTBHarness._defaults, "name": FAULT_PROGRAM}

    def compute(self, input_data: AtomicInput, config):
        fault_dir = Path(os.environ["QCMB_FAULT_DIR"])
        plan_file = fault_dir / "plan.json"
        plan = json.loads(plan_file.read_text()) if plan_file.exists() else {}
        if len(input_data.molecule.symbols) in plan.get("natoms", []):
            failures = plan.get("failures", 0)
            seen = fault_dir / f"attempts-{input_data.molecule.get_hash()}"
            with seen.open("a") as f:
                f.write("x")
            attempt = seen.stat().st_size
            if failures < 0 or attempt <= failures:
                return FailedOperation(
                    input_data=input_data,
                    error={"error_type": "fault_injection", "error_message": f"fault injected (attempt {attempt})"},
                )
        return super().compute(input_data, config)


def register() -> None:
    import qcengine

    if FAULT_PROGRAM not in qcengine.programs.base.programs:
        qcengine.register_program(FaultXTBHarness())
