"""Plan: task counts, fragment molecules and specifications exactly as QCManyBody's own, stable hashes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import FragmentBuilder, Plan
from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.reference import NWCHEM_HF, mbe_input

HF = {"hf": NWCHEM_HF}
THREE = {
    "a": ("nwchem", "mp2", "sto-3g"),
    "b": ("nwchem", "hf", "6-31g"),
    "c": NWCHEM_HF,
}


def case_inputs() -> dict[str, ManyBodyInput]:
    trimer, tetramer = water_trimer(), water_cluster(4)
    return {
        "nocp": mbe_input(trimer, HF, {3: "hf"}, bsse=["nocp"]),
        "cp": mbe_input(trimer, HF, {3: "hf"}, bsse=["cp"]),
        "vmfc": mbe_input(trimer, HF, {3: "hf"}, bsse=["vmfc"]),
        "all-bsse-mbe2": mbe_input(tetramer, HF, {2: "hf"}, bsse=["nocp", "cp", "vmfc"]),
        "cp-total-data": mbe_input(tetramer, HF, {3: "hf"}, bsse=["cp"], return_total_data=True),
        "multilevel": mbe_input(tetramer, THREE, {1: "a", 2: "b", 4: "c"}, bsse=["nocp", "cp", "vmfc"]),
        "supersystem": mbe_input(tetramer, THREE, {1: "a", 2: "b", "supersystem": "c"}, bsse=["nocp", "cp"]),
        "supersystem-ie-only": mbe_input(tetramer, HF, {4: "hf"}, bsse=["nocp", "cp"], supersystem_ie_only=True),
        "hessian-c1": mbe_input(
            Molecule(**{**water_trimer().model_dump(), "fix_symmetry": "c1"}),
            HF,
            {2: "hf"},
            bsse=["cp", "nocp"],
            driver="hessian",
        ),
    }


CASES = case_inputs()


@pytest.fixture(params=list(CASES))
def case(request: pytest.FixtureRequest) -> tuple[ManyBodyInput, Plan]:
    inp = CASES[request.param]
    return inp, Plan(inp)


def test_counts_match_format_calc_plan(case: tuple[ManyBodyInput, Plan]) -> None:
    _, plan = case
    _, expected = plan.core.format_calc_plan()
    assert plan.counts() == {mc: dict(sorted(c.items())) for mc, c in expected.items() if c}
    assert sum(len(t.labels) for t in plan.tasks) == sum(sum(c.values()) for c in expected.values())


def test_tasks_are_qcmanybodys_molecules_and_specifications(case: tuple[ManyBodyInput, Plan]) -> None:
    """Every (model chemistry, label, molecule) QCManyBody would run is one of our tasks, built identically."""
    inp, plan = case
    by_label = {label: t for t in plan.tasks for label in t.labels}
    seen = set()
    specs = {name: s.model_dump() for name, s in inp.specification.specification.items()}
    for mc, label, mol in plan.core.iterate_molecules():
        task = by_label[label]
        seen.add(label)
        atomic = plan.atomic_input(task)
        assert atomic.molecule.model_dump_json() == mol.model_dump_json()
        spec = atomic.specification.model_dump()
        assert spec["driver"] == inp.specification.driver
        assert spec["model"] == specs[mc]["model"] and spec["keywords"] == specs[mc]["keywords"]
        assert task.program == specs[mc]["program"]
        assert task.level == len(task.real) == len(json.loads(label)[1])
    assert seen == set(by_label)


def test_levels_and_costs(case: tuple[ManyBodyInput, Plan]) -> None:
    _, plan = case
    assert plan.levels == sorted({t.level for t in plan.tasks})
    assert sum(len(plan.tasks_at(lvl)) for lvl in plan.levels) == len(plan.tasks)
    assert plan.tasks_at(99) == []
    for t in plan.tasks:
        assert t.cost == (10.0 * len(t.basis)) ** 3  # ten electrons per water, in its basis
        assert plan.by_hash[t.hash] is t
    assert len(plan.by_hash) == len(plan.tasks)


def test_summary_names_every_model_chemistry() -> None:
    plan = Plan(CASES["multilevel"])
    text = plan.summary()
    assert text.startswith(f"{len(plan.tasks)} unique fragment calculations, 4 fragments")
    for mc, counts in plan.counts().items():
        assert f"model chemistry {mc!r} (nwchem): {sum(counts.values())}" in text


def _hashes(inp: ManyBodyInput) -> dict[str, str]:
    return {t.label: t.hash for t in Plan(inp).tasks}


HASH_SCRIPT = """
import json, sys
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput
from qcmb_fractal.plan import Plan
plan = Plan(ManyBodyInput.model_validate_json(sys.stdin.read()))
print(json.dumps({t.label: t.hash for t in plan.tasks}))
"""


def test_hashes_are_stable_across_processes() -> None:
    inp = CASES["all-bsse-mbe2"]
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", HASH_SCRIPT], input=inp.model_dump_json(), capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == _hashes(inp)
    assert len(set(_hashes(inp).values())) == len(Plan(inp).tasks)


def test_geometry_change_rehashes_only_tasks_holding_that_fragment() -> None:
    mol = water_cluster(4)
    geom = np.array(mol.geometry)
    geom[3, 0] += 1.0e-6  # first atom of the second water
    moved = Molecule(**{**mol.model_dump(), "geometry": geom})
    before = _hashes(mbe_input(mol, HF, {2: "hf"}, bsse=["nocp", "cp"]))
    after = _hashes(mbe_input(moved, HF, {2: "hf"}, bsse=["nocp", "cp"]))
    assert before.keys() == after.keys()
    for label, digest in before.items():
        basis = json.loads(label)[2]
        assert (digest != after[label]) == (2 in basis), label


@pytest.mark.parametrize(
    "change",
    [
        {"model": ("nwchem", "hf", "6-31g")},
        {"model": ("nwchem", "b3lyp", "sto-3g")},
        {"model": ("psi4", "hf", "sto-3g")},
        {"driver": "gradient"},
        {"charges": True},
        {"c1": True},
    ],
    ids=["basis", "method", "program", "driver", "fragment-charge", "symmetry"],
)
def test_specification_or_molecule_change_rehashes_everything(change: dict) -> None:
    mol = water_cluster(3)
    base = _hashes(mbe_input(mol, HF, {3: "hf"}, bsse=["nocp"]))
    if "charges" in change:
        charged = {"fragment_charges": [0, 0, 1], "fragment_multiplicities": [1, 1, 2], "molecular_charge": 1}
        mol = Molecule(**{**mol.model_dump(), **charged, "molecular_multiplicity": 2})
    if "c1" in change:
        mol = Molecule(**{**mol.model_dump(), "fix_symmetry": "c1"})
    models = {"hf": change.get("model", NWCHEM_HF)}
    other = _hashes(mbe_input(mol, models, {3: "hf"}, bsse=["nocp"], driver=change.get("driver", "energy")))
    assert other.keys() == base.keys()
    if "charges" in change:  # only tasks holding the charged third water change
        assert {k for k in base if base[k] != other[k]} == {k for k in base if 3 in json.loads(k)[2]}
    else:
        assert not set(base.values()) & set(other.values())


def test_identical_model_chemistries_are_computed_once() -> None:
    """Two level names with the same specification share every calculation both need."""
    twins = {"hf-a": NWCHEM_HF, "hf-b": NWCHEM_HF}
    plan = Plan(mbe_input(water_cluster(3), twins, {1: "hf-a", 3: "hf-b"}, bsse=["nocp"]))
    _, expected = plan.core.format_calc_plan()
    assert plan.counts() == {mc: dict(c) for mc, c in expected.items()}
    assert sum(len(t.labels) for t in plan.tasks) == 3 + 3 + 3 + 1  # a: monomers; b: all three levels
    shared = [t for t in plan.tasks if len(t.labels) == 2]
    assert len(shared) == 3 and all(t.level == 1 for t in shared)
    assert len(plan.tasks) == 7


def test_builder_rejects_unknown_model_chemistry() -> None:
    builder = FragmentBuilder(CASES["multilevel"])
    with pytest.raises(InputError, match="model chemistry 'nope' has no entry"):
        builder.spec_name("nope")
    single = FragmentBuilder(CASES["nocp"])
    assert single.spec_name("(auto)") == "hf"  # QCManyBody's name for the sole model chemistry


def test_fragment_molecule_has_ghosts_in_basis_only() -> None:
    builder = FragmentBuilder(CASES["cp"])
    mol = builder.fragment_molecule((2,), (1, 2, 3))
    assert mol.real.tolist() == [False] * 3 + [True] * 3 + [False] * 3
    assert mol.fix_com and mol.fix_orientation


def test_qcmanybody_planning_errors_become_input_errors() -> None:
    inp = mbe_input(water_cluster(4), HF, {2: "hf"}, bsse=["nocp"], supersystem_ie_only=True)
    with pytest.raises(InputError) as err:
        Plan(inp)
    assert str(err.value) == (
        "QCManyBody cannot plan this input:\n  supersystem_ie_only: Value error, Cannot skip intermediate n-body "
        "jobs when max_nbody=2 != nfragments=4."
    )
