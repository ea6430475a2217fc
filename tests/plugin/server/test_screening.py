"""Screened expansions on a real QCFractal server: the plugin service decides level by level and gives
the local backend's result; the qcportal backend, on the same server, gives it too; bad combinations
are refused at submission. xtb water tetramer, GFN2-xTB target, GFN1-xTB screening."""

import pytest
from qcmanybody.models.v2 import ManyBodyResult
from qcportal.record_models import RecordStatusEnum

from qcmb_fractal.errors import InputError
from qcmb_fractal.execute import Runner
from qcmb_fractal.execute.backends.local import LocalBackend
from qcmb_fractal.execute.backends.qcportal import QCPortalBackend
from qcmb_fractal.plan import make_plan
from qcmb_fractal.plan.screening import SCREEN_MC
from qcmb_fractal.plugin.client import (
    QCMBSpecification,
    add_qcmb_manybodys,
    get_qcmb_manybodys,
    qcmb_level_status,
    simple_specification,
)
from qcmb_fractal.plugin.server.record_socket import validated_input
from qcmb_fractal.testing.fractal import portal_molecule, wait_for_record
from qcmb_fractal.testing.molecules import water_cluster
from qcmb_fractal.testing.programs import needs_xtb
from qcmb_fractal.testing.reference import assert_same_result

pytestmark = needs_xtb

# 0.1 kcal/mol drops the tetramer's weakest diagonal pair and some trimers, and keeps the rest.
SPEC = simple_specification(
    program="xtb", method="gfn2-xtb", max_nbody=3, mode="levels", screen="xtb/gfn1-xtb", screen_threshold=0.1
)


def assert_same_decisions(got: list[dict], want: list[dict]) -> None:
    """The same counts and subsystems per level; increments equal to xtb's noise between processes."""
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert {k: v for k, v in g.items() if not isinstance(v, float)} == {
            k: v for k, v in w.items() if not isinstance(v, float)
        }
        for key, value in w.items():
            if isinstance(value, float):
                assert g[key] == pytest.approx(value, abs=1e-12), (w["level"], key)


@pytest.fixture(scope="module")
def molecule():
    return portal_molecule(water_cluster(4, shift=13.0))


@pytest.fixture(scope="module")
def local(molecule) -> ManyBodyResult:
    with LocalBackend(1) as backend:
        return Runner(make_plan(validated_input(molecule, SPEC)), backend, progress=False).run()


def test_screened_record_runs_level_by_level_and_equals_the_local_backend(client, molecule, local) -> None:
    _, (rid,) = add_qcmb_manybodys(client, molecule, SPEC)
    record = wait_for_record(client, rid)
    assert record.status == RecordStatusEnum.complete, record.error
    full = get_qcmb_manybodys(client, rid, include=["result", "clusters"])
    result = ManyBodyResult.model_validate_json(full.result.model_dump_json())
    assert_same_result(result, local)

    screening = local.extras["qcmb_fractal"]["screening"]
    assert 0 < screening["target_calculations"] < screening["full_calculations"] == 14
    assert sum(lv["dropped"] for lv in screening["levels"]) > 0
    assert_same_decisions(record.extras["qcmb_fractal"]["screening"]["levels"], screening["levels"])
    assert result.extras["qcmb_fractal"]["screening"]["target_calculations"] == screening["target_calculations"]
    assert "screened with xtb/gfn1-xtb, threshold 0.1 kcal/mol" in record.stdout

    # exactly the calculations the local run made, screening ones included, each a singlepoint record
    clusters = full.clusters
    targets = [c for c in clusters if c.mc_level != SCREEN_MC]
    assert len(targets) == screening["target_calculations"] == record.properties["calcinfo_nmbe"]
    assert len(clusters) - len(targets) == screening["screen_calculations"]
    assert len(clusters) == local.extras["qcmb_fractal"]["tasks"] and all(c.singlepoint_id for c in clusters)
    totals = {s.level: (s.total, s.complete) for s in qcmb_level_status(client, rid)}
    per_level = {n: sum(1 for c in clusters if c.level == n) for n in (1, 2, 3)}
    assert totals == {n: (k, k) for n, k in per_level.items()}

    # levels mode: nothing of level n was created before every calculation of level n-1 had finished
    created = {c.singlepoint_id: c.level for c in clusters}
    records = client.get_singlepoints(list(created))
    for n in (2, 3):
        assert min(r.created_on for r in records if created[r.id] == n) >= max(
            r.modified_on for r in records if created[r.id] == n - 1
        )
    # the screening children computed energies whatever the expansion computes
    assert {r.specification.method for r in records if created[r.id]} == {"gfn1-xtb", "gfn2-xtb"}


def test_the_qcportal_backend_runs_the_same_screened_expansion(client, molecule, local) -> None:
    backend = QCPortalBackend(client=client, poll_interval=0.5)
    with backend:
        result = Runner(make_plan(validated_input(molecule, SPEC)), backend, progress=False).run()
    assert_same_result(result, local)
    assert_same_decisions(
        result.extras["qcmb_fractal"]["screening"]["levels"], local.extras["qcmb_fractal"]["screening"]["levels"]
    )


def test_screening_in_the_manybody_extras_is_the_same_specification() -> None:
    manybody = {**SPEC.manybody, "extras": {"qcmb_fractal": {"screening": SPEC.screening.model_dump(mode="json")}}}
    moved = QCMBSpecification(manybody=manybody, mode="levels")
    assert moved == SPEC and "extras" not in moved.manybody  # one specification, one hash, one record
    screening = {"program": "xtb", "method": "gfn1-xtb"}
    other = {**manybody, "extras": {"mine": 1, "qcmb_fractal": {"screening": screening, "note": 2}}}
    spec = QCMBSpecification.model_validate({"manybody": other})
    assert spec.manybody["extras"] == {"mine": 1, "qcmb_fractal": {"note": 2}}
    assert spec.screening is not None and spec.screening.threshold == 0.01
    with pytest.raises(ValueError, match="screening is given twice"):
        QCMBSpecification(manybody=manybody, screening=SPEC.screening)


def test_counterpoise_with_screening_is_refused_at_submission(client, molecule) -> None:
    spec = simple_specification(
        program="nwchem", method="hf", basis="sto-3g", bsse=("cp",), max_nbody=2, screen="xtb/gfn1-xtb"
    )
    with pytest.raises(InputError, match=r"screening works with bsse_type \['nocp'\] only"):
        add_qcmb_manybodys(client, molecule, spec)
    with pytest.raises(InputError, match="need screen="):
        simple_specification(program="xtb", method="gfn2-xtb", max_nbody=2, screen_threshold=1.0)
