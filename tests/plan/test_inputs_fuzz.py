"""Hypothesis on the input boundary: any molecule/specification either plans or fails with InputError.

Examples are cheap (no QC program runs): validation, QCManyBody's planning and the task-count bound.
"""

import itertools
import math
import os
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import Plan, manybody_input, plain_input
from qcmb_fractal.plan.inputs import parse_plain_molecule
from qcmb_fractal.plan.planner import MAX_TASKS, estimate_task_count

# CI draws the same 500 examples every run (a red CI is then reproducible); locally they vary.
FUZZ = settings(
    max_examples=500,
    deadline=None,
    derandomize=bool(os.environ.get("CI")),
    suppress_health_check=[HealthCheck.too_slow],
)

ELEMENTS = ["H", "He", "Li", "C", "N", "O", "Na", "Cl", "h", "D", "Xx", ""]
ODD_NUMBERS = [math.nan, math.inf, -math.inf, 1e6, -1e300, 0.0]
PROGRAMS = ["xtb", "nwchem", "XTB", "psi4", "mopac", "bogus", ""]


EVEN_ELECTRON = ["He", "Be", "C", "O", "Ne"]  # neutral singlet atoms: fragments of these plan cleanly


@st.composite
def partitions(draw, natom: int) -> list[list[int]]:
    """A contiguous partition of ``natom`` atoms into at least two fragments."""
    cuts = sorted(draw(st.sets(st.integers(1, natom - 1), min_size=1, max_size=natom - 1)))
    return [list(range(a, b)) for a, b in itertools.pairwise([0, *cuts, natom])]


@st.composite
def sound_molecules(draw) -> dict[str, Any]:
    """Molecules that should plan, so the planner itself gets fuzzed, not only the validation."""
    natom = draw(st.integers(2, 6))
    symbols = draw(st.lists(st.sampled_from(EVEN_ELECTRON), min_size=natom, max_size=natom))
    geometry = [float(c) for i in range(natom) for c in (3.0 * i, 0.3 * (i % 2), 0.0)]
    return {"symbols": symbols, "geometry": geometry, "fragments": draw(partitions(natom))}


@st.composite
def wild_molecules(draw) -> dict[str, Any]:
    natom = draw(st.integers(0, 8))
    symbols = draw(st.lists(st.sampled_from(ELEMENTS[:8]), min_size=natom, max_size=natom))
    if draw(st.integers(0, 9)) == 0:
        symbols = [draw(st.sampled_from(ELEMENTS)) for _ in symbols]
    geometry = [float(c) for i in range(natom) for c in (3.0 * i, 0.3 * (i % 2), 0.0)]
    if draw(st.integers(0, 4)) == 0 and geometry:
        geometry[draw(st.integers(0, len(geometry) - 1))] = draw(st.sampled_from(ODD_NUMBERS))
    if natom >= 2 and draw(st.booleans()):
        fragments = draw(partitions(natom))
    else:
        fragments = draw(st.lists(st.lists(st.integers(-1, natom + 1), max_size=4), max_size=5))
    mol: dict[str, Any] = {"symbols": symbols, "geometry": geometry, "fragments": fragments}
    nfr = len(mol["fragments"])
    charge_values = st.one_of(st.integers(-2, 2), st.sampled_from([0.5, math.nan]))
    if draw(st.booleans()):
        mol["fragment_charges"] = draw(st.lists(charge_values, min_size=max(0, nfr - 1), max_size=nfr + 1))
    if draw(st.booleans()):
        mol["fragment_multiplicities"] = draw(st.lists(st.integers(0, 4), min_size=max(0, nfr - 1), max_size=nfr + 1))
    if draw(st.integers(0, 3)) == 0:
        mol["molecular_charge"] = draw(charge_values)
    if draw(st.integers(0, 3)) == 0:
        mol["molecular_multiplicity"] = draw(st.integers(0, 4))
    return mol


def molecules() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(sound_molecules(), wild_molecules())


@st.composite
def specifications(draw, nfr: int) -> dict[str, Any]:
    sound = draw(st.booleans())
    program = draw(st.sampled_from(["xtb", "nwchem"] if sound else PROGRAMS))
    driver = draw(st.sampled_from(["energy", "gradient", "hessian"] if sound else ["energy", "properties", "bogus"]))
    treatments = ["nocp", "cp", "vmfc"] if program != "xtb" or not sound else ["nocp"]
    bsse = draw(
        st.lists(
            st.sampled_from(treatments if sound else [*treatments, "bogus"]),
            min_size=int(sound),
            max_size=3,
            unique=True,
        )
    )
    max_nbody = draw(st.integers(1, max(1, nfr)) if sound else st.one_of(st.none(), st.integers(-1, nfr + 2)))
    keywords: dict[str, Any] = {"bsse_type": bsse, "max_nbody": max_nbody}
    names = ["lo", "hi"]
    if sound:
        names = names if max_nbody > 1 and draw(st.booleans()) else names[:1]
        if len(names) == 2:
            keywords["levels"] = {1: "lo", max_nbody: "hi"}
    elif not sound and draw(st.booleans()):
        keys = st.one_of(st.integers(-1, nfr + 1), st.just("supersystem"))
        keywords["levels"] = draw(st.dictionaries(keys, st.sampled_from([*names, "missing"]), max_size=3))
    model = {"method": draw(st.sampled_from(["hf", "gfn2-xtb"])), "basis": draw(st.sampled_from([None, "sto-3g"]))}
    spec = {"program": program, "model": model, "driver": driver, "keywords": {}}
    return {"driver": driver, "keywords": keywords, "specification": {name: spec for name in names}}


def plan_or_input_error(data: dict[str, Any]) -> Plan | None:
    try:
        inp = manybody_input(data)
        plan = Plan(inp)
    except InputError as err:
        assert str(err).strip(), "an InputError must say what is wrong"
        event("refused: " + " ".join(str(err).split()[:4]))
        return None
    event("planned")
    mol = inp.molecule
    flat = [i for f in mol.fragments for i in f]
    assert flat == list(range(len(mol.symbols))), "accepted fragments must be contiguous and complete"
    assert len(mol.fragments) >= 2
    assert all(math.isfinite(x) for x in mol.geometry.ravel())
    max_nbody = plan.input.specification.keywords.max_nbody
    assert max_nbody is None or 1 <= max_nbody <= len(mol.fragments)
    assert max(t.level for t in plan.tasks) <= (max_nbody or len(mol.fragments))
    assert len(plan.tasks) <= estimate_task_count(inp), "the bound that guards memory must never undercount"
    assert {t.program.lower() for t in plan.tasks} <= {"xtb", "nwchem", "psi4", "mopac"}
    return plan


@FUZZ
@given(st.data())
def test_any_manybody_input_plans_or_says_what_is_wrong(data):
    mol = data.draw(molecules())
    spec = data.draw(specifications(len(mol["fragments"])))
    plan_or_input_error({"molecule": mol, "specification": spec})


@FUZZ
@given(
    mol=molecules(),
    program=st.sampled_from(PROGRAMS),
    bsse=st.one_of(st.none(), st.lists(st.sampled_from(["nocp", "cp", "vmfc"]), min_size=1, unique=True)),
    max_nbody=st.one_of(st.none(), st.integers(-2, 10)),
    driver=st.sampled_from(["energy", "gradient", "hessian"]),
)
def test_command_line_style_options_plan_or_say_what_is_wrong(mol, program, bsse, max_nbody, driver):
    try:
        inp = plain_input(
            mol, program=program, method="hf", basis="sto-3g", bsse=bsse, max_nbody=max_nbody, driver=driver
        )
    except InputError as err:
        assert str(err).strip()
        return
    plan_or_input_error(inp.model_dump())


NOISE = st.one_of(
    st.builds(
        "{} {} {} {}".format,
        st.sampled_from(["O", "H", "h", "Xx", "C", "12"]),
        *[st.one_of(st.floats(-10, 10), st.sampled_from(["nan", "inf", "1e400", "x"]))] * 3,
    ),
    st.sampled_from(["--", "0 1", "-1 2", "units bohr", "units angstrom", "units parsec", "# comment", "", "a b c"]),
    st.text(max_size=20),
)


@st.composite
def plain_texts(draw) -> str:
    """Fragments of helium atoms separated by '--', with some noise lines put in anywhere."""
    lines: list[str] = []
    atom = 0
    for ifr in range(draw(st.integers(0, 4))):
        if ifr:
            lines.append("--")
        if draw(st.booleans()):
            lines.append("0 1")
        for _ in range(draw(st.integers(1, 2))):
            lines.append(f"He {2.0 * atom:.3f} 0.0 0.0")
            atom += 1
    for _ in range(draw(st.integers(0, 2))):
        lines.insert(draw(st.integers(0, len(lines))), draw(NOISE))
    return "\n".join(lines)


@FUZZ
@given(text=plain_texts(), max_nbody=st.one_of(st.none(), st.integers(-1, 5)))
def test_plain_molecule_text_plans_or_says_what_is_wrong(text, max_nbody):
    try:
        mol = parse_plain_molecule(text)
        inp = plain_input(mol, program="xtb", method="gfn2-xtb", max_nbody=max_nbody)
    except InputError as err:
        assert str(err).strip()
        event("refused: " + " ".join(str(err).split()[:4]))
        return
    plan_or_input_error(inp.model_dump())


@FUZZ
@given(
    nfr=st.integers(2, 10**6),
    max_nbody=st.integers(1, 12),
    bsse=st.lists(st.sampled_from(["nocp", "cp", "vmfc"]), min_size=1, unique=True),
)
def test_huge_clusters_are_refused_from_binomials_before_enumeration(nfr, max_nbody, bsse):
    """Only the count is computed, so even a million fragments is refused at once (no molecule is built)."""
    from types import SimpleNamespace

    max_nbody = min(max_nbody, nfr)
    kw = SimpleNamespace(max_nbody=max_nbody, levels=None, bsse_type=[SimpleNamespace(value=b) for b in bsse])
    inp = SimpleNamespace(specification=SimpleNamespace(keywords=kw), molecule=SimpleNamespace(fragments=[()] * nfr))
    exact = sum(math.comb(nfr, k) for k in range(1, max_nbody + 1))
    estimate = estimate_task_count(inp, stop_above=MAX_TASKS)  # type: ignore[arg-type]
    if exact > MAX_TASKS:
        assert estimate > MAX_TASKS
    else:
        assert estimate >= exact
