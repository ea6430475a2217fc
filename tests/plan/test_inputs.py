"""Input handling: every bad input gets one InputError that says what to change."""

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan import load_input, manybody_input, plain_input
from qcmb_fractal.plan.inputs import RECONCILE_LIMIT, fill_fragment_charges, parse_plain_molecule
from qcmb_fractal.testing.molecules import water_cluster, water_cluster_text, water_trimer


def mol_dict(n: int = 3, **changes: Any) -> dict[str, Any]:
    mol = water_cluster(n).model_dump()
    out = {k: mol[k] for k in ("symbols", "geometry", "fragments")}
    out["symbols"] = [str(x) for x in out["symbols"]]
    out["geometry"] = np.asarray(out["geometry"]).ravel().tolist()
    out["fragments"] = [list(map(int, f)) for f in out["fragments"]]
    return {**out, **changes}


def spec(program: str = "nwchem", bsse: list[str] | None = None, **keywords: Any) -> dict[str, Any]:
    return {
        "driver": "energy",
        "keywords": {"bsse_type": bsse or ["nocp"], **keywords},
        "specification": {"mc": {"program": program, "driver": "energy", "model": {"method": "hf", "basis": "sto-3g"}}},
    }


def test_valid_input_gets_explicit_fragment_charges() -> None:
    inp = manybody_input({"molecule": mol_dict(), "specification": spec()})
    assert inp.molecule.fragment_charges == [0.0, 0.0, 0.0]
    assert inp.molecule.fragment_multiplicities == [1, 1, 1]
    assert manybody_input(inp).molecule == inp.molecule  # a ManyBodyInput passes through unchanged


def test_molecule_object_is_accepted() -> None:
    inp = manybody_input({"molecule": water_trimer(), "specification": spec()})
    assert len(inp.molecule.fragments) == 3


@pytest.mark.parametrize(
    ("data", "fix"),
    [
        ([1, 2], "must be a mapping with 'molecule' and 'specification'"),
        ({"specification": spec()}, "has no molecule"),
        ({"molecule": mol_dict(fragments=[[0, 1, 2, 3, 4, 5, 6, 7, 8]]), "specification": spec()}, "at least two"),
        ({"molecule": mol_dict(fragments=[[0, 1, 2], [], [3, 4, 5, 6, 7, 8]]), "specification": spec()}, "empty"),
        ({"molecule": mol_dict(fragments=[[0, 1, 2], [2, 3, 4], [5, 6, 7, 8]]), "specification": spec()}, "overlap"),
        ({"molecule": mol_dict(fragments=[[0, 1, 2], [3, 4, 5], [6, 7]]), "specification": spec()}, "missing atoms"),
        ({"molecule": mol_dict(fragments=[[0, 1, 2], [6, 7, 8], [3, 4, 5]]), "specification": spec()}, "reorder"),
        ({"molecule": mol_dict(geometry=[float("nan")] * 27), "specification": spec()}, "NaN"),
        ({"molecule": mol_dict(geometry=[2.0e5] * 27), "specification": spec()}, "check the units"),
        ({"molecule": mol_dict(), "specification": {"driver": "energy"}}, "not valid QCSchema"),
        ({"molecule": mol_dict(), "specification": spec(embedding_charges={1: [0.0]})}, "embedding_charges"),
        ({"molecule": mol_dict(), "specification": spec(max_nbody=4)}, "between 1 and the number of fragments"),
        ({"molecule": mol_dict(), "specification": spec(levels={5: "mc"})}, "orders must lie between 1 and 3"),
        ({"molecule": mol_dict(), "specification": spec(levels={3: "other"})}, "not a key of"),
        ({"molecule": mol_dict(), "specification": spec(levels={2: "mc"}, max_nbody=3)}, "set it to 2"),
        ({"molecule": mol_dict(), "specification": spec("xtb", ["nocp", "cp"])}, "program 'xtb'"),
        ({"molecule": mol_dict(), "specification": spec("mopac", ["vmfc"])}, "Use bsse_type ['nocp'] with mopac"),
        ({"molecule": mol_dict(), "specification": spec(bsse=["bogus"])}, "not valid"),
    ],
    ids=lambda x: "" if isinstance(x, (dict, list)) else x[:24],
)
def test_bad_inputs_say_what_to_fix(data: Any, fix: str) -> None:
    with pytest.raises(InputError) as err:
        manybody_input(data)
    assert fix in str(err.value)


def test_ghost_blind_program_message_suggests_alternatives() -> None:
    with pytest.raises(InputError, match="nwchem, psi4"):
        manybody_input({"molecule": mol_dict(), "specification": spec("xtb", ["cp"])})
    assert manybody_input({"molecule": mol_dict(), "specification": spec("xtb", ["nocp"])})


def test_fragment_charges_inferred_or_required() -> None:
    ion = mol_dict(4)
    ion["symbols"][3] = "F"  # an odd electron count: cannot be a neutral singlet
    assert fill_fragment_charges(ion) is ion  # few fragments: qcelemental may reconcile it
    big = mol_dict(RECONCILE_LIMIT)
    big["symbols"][3] = "F"
    with pytest.raises(InputError, match="Give both lists explicitly"):
        fill_fragment_charges(big)
    given = fill_fragment_charges({**mol_dict(2), "fragment_charges": [0, 0]})
    assert given["fragment_multiplicities"] == [1.0, 1.0] and given["fragment_charges"] == [0.0, 0.0]
    charged = mol_dict(RECONCILE_LIMIT, molecular_charge=1.0)
    with pytest.raises(InputError, match="fragment_charges"):
        fill_fragment_charges(charged)
    single = {"symbols": ["He"], "geometry": [0, 0, 0], "fragments": [[0]]}
    assert fill_fragment_charges(single) is single


def test_plain_molecule_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "w3.xyz"
    path.write_text("# three waters\n" + water_cluster_text(3))
    inp = load_input(path, program="nwchem", method="hf", basis="sto-3g", bsse=["nocp", "cp"], max_nbody=2)
    np.testing.assert_allclose(inp.molecule.geometry, water_cluster(3).geometry, atol=1e-5)
    keywords = inp.specification.keywords
    assert [b.value for b in keywords.bsse_type] == ["nocp", "cp"] and keywords.levels == {2: "nwchem-hf/sto-3g"}
    assert inp.specification.specification["nwchem-hf/sto-3g"].model.basis == "sto-3g"


def test_plain_molecule_units_and_charges() -> None:
    mol = parse_plain_molecule("units bohr\n0 1\nHe 0 0 0\n--\n1 2\nLi 0 0 5\n")
    assert mol["geometry"] == [0.0, 0.0, 0.0, 0.0, 0.0, 5.0]
    assert mol["fragment_charges"] == [0.0, 1.0] and mol["fragment_multiplicities"] == [1.0, 2.0]
    angstrom = parse_plain_molecule("units angstrom\nHe 0 0 0\n--\nHe 0 0 1\n")
    assert angstrom["geometry"][5] == pytest.approx(1.8897261, rel=1e-6)


@pytest.mark.parametrize(
    ("text", "fix"),
    [
        ("units furlong\nHe 0 0 0\n", "units must be 'angstrom' or 'bohr'"),
        ("zero one\nHe 0 0 0\n", "expected 'charge multiplicity'"),
        ("He 0 0 x\n", "expected 'Symbol x y z'"),
        ("Qq 0 0 0\n", "not an element symbol"),
        ("He 0 0\n--\nHe 0 0 1\n", "cannot read"),
        ("0 1\nHe 0 0 0\n--\nHe 0 0 1\n", "for every fragment or for none"),
    ],
)
def test_bad_plain_molecules(text: str, fix: str) -> None:
    with pytest.raises(InputError, match=fix):
        parse_plain_molecule(text)


def test_load_json_and_yaml(tmp_path: Path) -> None:
    data = {"molecule": mol_dict(), "specification": spec()}
    (tmp_path / "in.json").write_text(json.dumps(data))
    (tmp_path / "in.yaml").write_text(yaml.safe_dump(data))
    assert load_input(tmp_path / "in.json") == load_input(tmp_path / "in.yaml")


@pytest.mark.parametrize(
    ("name", "text", "options", "fix"),
    [
        ("in.json", "{not json", {}, "in.json is not valid JSON"),
        ("in.yml", "a: [", {}, "in.yml is not valid YML"),
        ("in.xyz", "He 0 0 0\n--\nHe 0 0 3\n", {}, "--program and --method are needed"),
        ("missing.json", None, {}, "cannot read input file"),
    ],
)
def test_load_errors(tmp_path: Path, name: str, text: str | None, options: dict, fix: str) -> None:
    if text is not None:
        (tmp_path / name).write_text(text)
    with pytest.raises(InputError, match=fix):
        load_input(tmp_path / name, **options)


def test_plain_input_defaults_to_full_expansion() -> None:
    inp = plain_input(mol_dict(), program="xtb", method="gfn2-xtb")
    assert inp.specification.keywords.max_nbody == 3
    assert [b.value for b in inp.specification.keywords.bsse_type] == ["nocp"]
