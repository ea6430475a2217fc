"""Screening settings, their validation, the bottom-up selection rule and the growing screened plan."""

import numpy as np
import pytest
from qcelemental import constants

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import FragmentBuilder, Plan, ScreenedPlan, make_plan, manybody_input
from qcmb_fractal.plan.screening import (
    DEFAULT_THRESHOLD,
    SCREEN_MC,
    LevelScreening,
    ScreeningReport,
    ScreeningSettings,
    candidates,
    closest_atom_distances,
    in_contact,
    screening_settings,
    select,
    settings_from_dict,
    with_screening,
    within_distance,
)
from qcmb_fractal.testing.molecules import water_cluster, water_trimer
from qcmb_fractal.testing.reference import NWCHEM_HF, XTB_GFN2, mbe_input

GFN1 = ScreeningSettings(program="xtb", method="gfn1-xtb")


def xtb_input(n: int = 4, max_nbody: int = 3, driver: str = "energy", **keywords):
    models = {"gfn2": XTB_GFN2}
    return mbe_input(water_cluster(n), models, {max_nbody: "gfn2"}, bsse=["nocp"], driver=driver, **keywords)


def test_settings_from_the_command_line_string() -> None:
    s = ScreeningSettings.from_model_string("XTB/gfn1-xtb", threshold=0.5)
    assert (s.program, s.method, s.basis, s.threshold, s.distance) == ("xtb", "gfn1-xtb", None, 0.5, None)
    assert s.model_string == "xtb/gfn1-xtb"
    assert s.threshold_hartree == pytest.approx(0.5 / constants.hartree2kcalmol, rel=1e-15)
    hf = ScreeningSettings.from_model_string("nwchem/hf/sto-3g")
    assert (hf.basis, hf.threshold, hf.model_string) == ("sto-3g", DEFAULT_THRESHOLD, "nwchem/hf/sto-3g")
    spec = hf.atomic_specification()
    assert (spec.program, spec.driver.value) == ("nwchem", "energy")
    assert (spec.model.method, spec.model.basis) == ("hf", "sto-3g")


@pytest.mark.parametrize("text", ["xtb", "xtb/", "/gfn1-xtb", "a/b/c/d", "xtb/ /x"])
def test_model_string_must_be_program_method_basis(text: str) -> None:
    with pytest.raises(InputError, match="is not PROGRAM/METHOD"):
        ScreeningSettings.from_model_string(text)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"program": "xtb", "method": "gfn1-xtb", "threshold": -1}, "threshold: Input should be greater than or equal"),
        ({"program": "xtb", "method": "gfn1-xtb", "threshold": float("nan")}, "threshold: Input should be a finite"),
        ({"program": "xtb", "method": "gfn1-xtb", "distance": 0}, "distance: Input should be greater than 0"),
        ({"program": "xtb", "method": "gfn1-xtb", "contact": -1}, "contact: Input should be greater than or equal"),
        ({"program": "xtb", "method": "gfn1-xtb", "treshold": 1}, "treshold: Extra inputs are not permitted"),
        ({"program": "xtb"}, "method: Field required"),
    ],
)
def test_bad_settings_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(InputError, match="screening settings are not valid") as err:
        settings_from_dict(data)
    assert message in str(err.value)


def test_settings_travel_inside_the_input_and_can_be_removed() -> None:
    plain = xtb_input()
    assert screening_settings(plain) is None
    screened = with_screening(plain, GFN1)
    assert screened.specification.extras == {"qcmb_fractal": {"screening": GFN1.model_dump(mode="json")}}
    assert screening_settings(screened) == GFN1
    assert screening_settings(with_screening(screened, None)) is None
    assert with_screening(screened, None).specification.extras == {}
    kept = xtb_input().model_copy(deep=True)
    kept.specification.extras["qcmb_fractal"] = {"note": 1}
    assert with_screening(with_screening(kept, GFN1), None).specification.extras == {"qcmb_fractal": {"note": 1}}
    broken = plain.model_copy(deep=True)
    broken.specification.extras["qcmb_fractal"] = {"screening": "xtb/gfn1-xtb"}
    with pytest.raises(InputError, match="must be a mapping"):
        screening_settings(broken)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda: mbe_input(water_trimer(), {"hf": NWCHEM_HF}, {2: "hf"}, bsse=["nocp", "cp"]),
            r"bsse_type \['nocp'\] only, not \['nocp', 'cp'\]",
        ),
        (lambda: mbe_input(water_trimer(), {"hf": NWCHEM_HF}, {2: "hf"}, bsse=["vmfc"]), "not implemented"),
        (
            lambda: mbe_input(
                water_trimer(), {"a": XTB_GFN2, "b": ("xtb", "gfn1-xtb", None)}, {1: "a", 2: "b"}, bsse=["nocp"]
            ),
            "one model chemistry for every n-body level",
        ),
        (
            lambda: mbe_input(
                water_trimer(), {"a": XTB_GFN2, "b": NWCHEM_HF}, {2: "a", "supersystem": "b"}, bsse=["nocp"]
            ),
            "no supersystem",
        ),
        (lambda: mbe_input(water_trimer(), {SCREEN_MC: XTB_GFN2}, {2: SCREEN_MC}, bsse=["nocp"]), "reserved"),
    ],
)
def test_what_screening_cannot_do_is_refused(make, message: str) -> None:
    with pytest.raises(InputError, match=message):
        with_screening(make(), GFN1)


def test_unknown_screening_program_and_intermediate_levels_are_refused() -> None:
    with pytest.raises(InputError, match="'nope' is not a QCEngine program"):
        with_screening(xtb_input(), ScreeningSettings(program="nope", method="x"))
    skip = mbe_input(water_trimer(), {"gfn2": XTB_GFN2}, {3: "gfn2"}, bsse=["nocp"], supersystem_ie_only=True)
    with pytest.raises(InputError, match="supersystem_ie_only"):
        with_screening(skip, GFN1)


def test_closest_atom_distances_and_the_cut_off() -> None:
    mol = water_cluster(4)
    d = closest_atom_distances(mol)
    geom = np.asarray(mol.geometry).reshape(-1, 3) * constants.bohr2angstroms
    by_hand = min(np.linalg.norm(geom[a] - geom[b]) for a in (0, 1, 2) for b in (9, 10, 11))
    assert d[0, 3] == pytest.approx(by_hand, abs=1e-12) and d[3, 0] == d[0, 3]
    assert np.all(np.diag(d) == 0) and np.all(d[~np.eye(4, dtype=bool)] > 1.5)
    # the 2x2 grid: neighbours hydrogen-bonded at ~1.9 Å, diagonals farther
    assert d[0, 1] < 2.2 and d[0, 3] > 2.5
    assert within_distance((1, 2), d, None) and within_distance((1, 2), d, 2.2)
    assert not within_distance((1, 2, 4), d, 2.2) and within_distance((1, 2, 4), d, float(d.max()))
    assert in_contact((1, 2), d, 2.2) and not in_contact((1, 4), d, 3.0) and not in_contact((1, 2, 4), d, 9.0)
    assert not in_contact((1, 2), d, 0.0)


def test_candidates_are_subsystems_whose_every_part_was_kept() -> None:
    assert candidates([(1,), (2,), (3,)], 3) == [(1, 2), (1, 3), (2, 3)]
    assert candidates([(1,), (3,)], 4) == [(1, 3)]
    kept_pairs = [(1, 2), (1, 3), (2, 3), (3, 4), (2, 4)]
    assert candidates(kept_pairs, 4) == [(1, 2, 3), (2, 3, 4)]  # (1,2,4) lacks (1,4); (1,3,4) lacks (1,4)
    assert candidates([(1, 2, 3), (1, 2, 4), (1, 3, 4)], 4) == []  # (2,3,4) was not kept
    assert candidates([(1, 2, 3), (1, 2, 4), (1, 3, 4), (2, 3, 4)], 4) == [(1, 2, 3, 4)]
    assert candidates([], 4) == []


def test_select_keeps_magnitudes_at_or_above_the_threshold_and_contacts() -> None:
    increments = {(1, 2): -2e-5, (1, 3): 1e-5, (2, 3): 0.99999e-5, (3, 4): -1e-5, (2, 4): 1e-9}
    kept, dropped = select(increments, 1e-5)
    assert kept == [(1, 2), (1, 3), (3, 4)] and dropped == [(2, 3), (2, 4)]
    assert select(increments, 1e-5, always=[(2, 4)]) == ([(1, 2), (1, 3), (2, 4), (3, 4)], [(2, 3)])
    assert select({(1, 2): 0.0}, 0.0) == ([(1, 2)], [])  # threshold 0 keeps everything


def test_level_and_report_arithmetic() -> None:
    incs = {(1, 2): -3e-3, (1, 3): 2e-5, (2, 3): -4e-5, (1, 4): 1e-6}
    level = LevelScreening.decide(2, 4, incs, [(1, 3), (1, 4), (2, 3)], beyond=2, in_contact=1)
    assert (level.full, level.beyond_distance, level.candidates, level.kept, level.dropped) == (6, 2, 4, 1, 3)
    assert level.kept_in_contact == 1
    assert level.estimated_error == pytest.approx(6.1e-5, abs=1e-18)  # magnitudes: dropped terms cancel
    assert level.estimated_error_signed == pytest.approx(2e-5 - 4e-5 + 1e-6, abs=1e-18)
    assert (level.largest_dropped, level.largest_dropped_subsystem) == (-4e-5, [2, 3])
    moved = level.with_bias(-1e-5, [incs[s] for s in [(1, 3), (1, 4), (2, 3)]])
    assert moved.bias == -1e-5 and moved.estimated_error == pytest.approx(1e-5 + 5e-5 + 9e-6, abs=1e-18)
    assert (moved.estimated_error_signed, moved.kept) == (level.estimated_error_signed, level.kept)
    first = LevelScreening.decide(1, 4, {(i,): -76.0 for i in range(1, 5)}, [])
    assert (first.kept, first.dropped, first.largest_dropped, first.estimated_error) == (4, 0, None, 0.0)
    three = LevelScreening.decide(3, 4, {(1, 2, 4): 5e-5}, [(1, 2, 4)])
    report = ScreeningReport.build(GFN1, [first, level, three], target=5, screen=9)
    assert (report.full_calculations, report.saved_calculations) == (4 + 6 + 4, 14 - 5)
    assert report.estimated_error == pytest.approx(1.11e-4, abs=1e-18)
    assert report.estimated_error_signed == pytest.approx(-1.9e-5 + 5e-5, abs=1e-18)
    assert (report.largest_dropped_increment, report.largest_dropped_subsystem) == (5e-5, [1, 2, 4])
    table = report.table()
    assert "screened with xtb/gfn1-xtb, threshold 0.01 kcal/mol, contact 3 Å" in table
    assert "target calculations 5 of 14 (35.7%), 9 screening calculations" in table
    assert f"{5e-5 * constants.hartree2kcalmol:27.6f}" in table.splitlines()[4]


def test_screened_plan_starts_with_monomers_hashed_like_the_plain_plan() -> None:
    inp = xtb_input(4, 3)
    plain = Plan(inp)
    plan = make_plan(with_screening(inp, GFN1))
    assert isinstance(plan, ScreenedPlan) and type(make_plan(inp)) is Plan
    assert plan.levels == [1, 2, 3] and plan.full_calculations == 4 + 6 + 4 == len(plain.tasks)
    assert sorted(plan.screened) == sorted(plan.targeted) == [(1,), (2,), (3,), (4,)]
    plain_hash = {t.real: t.hash for t in plain.tasks}
    assert {s: t.hash for s, t in plan.targeted.items()} == {s: plain_hash[s] for s in plan.targeted}
    assert all(t.program == "xtb" and t.label.startswith('["(screen)"') for t in plan.screened.values())
    assert not set(t.hash for t in plan.screened.values()) & set(plain_hash.values())

    new = plan.add(screen=[(1, 2), (1, 3)], target=[(1, 2)])
    assert [(t.mc, t.real) for t in new] == [(SCREEN_MC, (1, 2)), (SCREEN_MC, (1, 3)), ("gfn2", (1, 2))]
    assert plan.add(screen=[(1, 2)], target=[(1, 2)]) == []  # known ones are not added twice
    assert new[2].hash == plain_hash[(1, 2)] and new[2].cost == plain.by_hash[new[2].hash].cost
    assert [t.real for t in plan.screened_at(2)] == [(1, 2), (1, 3)] and plan.tasks_at(2) == new
    assert plan.by_hash[new[0].hash] is new[0] and len(plan.tasks) == 11
    assert plan.counts() == {SCREEN_MC: {1: 4, 2: 2}, "gfn2": {1: 4, 2: 1}}
    assert "screening with xtb/gfn1-xtb, threshold 0.01 kcal/mol" in plan.summary()
    assert "unscreened expansion needs 14 target calculations" in plan.summary()


def test_screened_plan_refusals() -> None:
    inp = xtb_input(4, 3)
    with pytest.raises(InputError, match="is the target's own"):
        make_plan(with_screening(inp, ScreeningSettings(program="xtb", method="gfn2-xtb")))
    with pytest.raises(InputError, match=r"needs more than 7 calculations by the 1-body level \(0 so far, 8 more\)"):
        make_plan(with_screening(inp, GFN1), max_tasks=7)
    with pytest.raises(InputError, match="at least 1"):
        ScreenedPlan(with_screening(inp, GFN1), max_tasks=0)
    plan = make_plan(with_screening(inp, GFN1), max_tasks=9)
    with pytest.raises(InputError, match=r"by the 2-body level \(8 so far, 2 more\); raise the threshold"):
        plan.add(screen=[(1, 2), (1, 3)])
    with pytest.raises(ValueError, match="needs an input with screening"):
        ScreenedPlan(inp)
    far = make_plan(with_screening(inp, ScreeningSettings(program="xtb", method="gfn1-xtb", distance=2.5)))
    assert far.distances is not None and far.distances.shape == (4, 4)
    assert "contact 3 Å, distance cut-off 2.5 Å" in far.summary()


def test_builder_screens_with_energies_whatever_the_driver() -> None:
    inp = with_screening(xtb_input(3, 2, driver="gradient"), GFN1)
    plan = make_plan(inp)
    builder = FragmentBuilder(inp)
    screen = builder.atomic_input(plan.screened[(2,)])
    target = builder.atomic_input(plan.targeted[(2,)])
    assert (screen.specification.driver.value, screen.specification.model.method) == ("energy", "gfn1-xtb")
    assert (target.specification.driver.value, target.specification.model.method) == ("gradient", "gfn2-xtb")
    assert screen.molecule == target.molecule
    # levels left out: QCManyBody's "(auto)" still finds the one target specification beside the screening one
    auto = manybody_input(
        {
            "molecule": water_trimer(),
            "specification": {
                "driver": "energy",
                "keywords": {"bsse_type": ["nocp"], "max_nbody": 2},
                "specification": {"gfn2": {"program": "xtb", "model": {"method": "gfn2-xtb"}, "driver": "energy"}},
                "extras": {"qcmb_fractal": {"screening": {"program": "xtb", "method": "gfn1-xtb"}}},
            },
        }
    )
    assert FragmentBuilder(auto).spec_name("(auto)") == "gfn2"
    assert make_plan(auto).target_mc == "(auto)" and make_plan(auto).full_calculations == 6
