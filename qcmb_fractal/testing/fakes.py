"""Made-up fragment results, for tests of bookkeeping (driver, checkpoint) only, never of chemistry."""

from qcelemental.models.v2 import AtomicResult

from qcmb_fractal.plan import FragmentTask, Plan


def fake_atomic_result(plan: Plan, task: FragmentTask, **values: object) -> AtomicResult:
    """An AtomicResult shaped as a QCEngine harness returns it, holding the given numbers.

    ``values`` are ``energy``/``gradient``/``hessian`` (stored as ``properties.return_*``) and
    optionally ``return_result`` (default: the driver's own value).
    """
    atomic = plan.atomic_input(task)
    driver = atomic.specification.driver.value
    ret = values.pop("return_result", values.get(driver))
    props = {f"return_{k}": v for k, v in values.items()} | {"calcinfo_natom": len(atomic.molecule.symbols)}
    return AtomicResult(
        input_data=atomic,
        molecule=atomic.molecule,
        properties=props,
        return_result=ret,
        provenance={"creator": "fake-harness"},
        success=True,
    )
