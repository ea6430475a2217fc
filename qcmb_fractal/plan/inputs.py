"""Turn what a user hands us (QCSchema file, or a plain molecule file plus options) into a ManyBodyInput.

Everything here fails with :class:`InputError` and a message that says how to fix the input, because
this is the boundary where people's files meet the code.
"""

import json
import math
from pathlib import Path
from typing import Any

import pydantic
import yaml
from qcelemental import periodictable
from qcelemental.exceptions import MoleculeFormatError, NotAnElementError, ValidationError
from qcelemental.models.v2 import Molecule
from qcmanybody.models.v2 import ManyBodyInput

from qcmb_fractal.errors import InputError
from qcmb_fractal.plan.screening import check_screening

# Above this many fragments qcelemental's charge/multiplicity reconciliation explodes combinatorially
# (measured: > 8 GB at 32 fragments), so below it we may let qcelemental reconcile what we cannot infer.
RECONCILE_LIMIT = 16

# Programs whose QCEngine harness silently drops ghost atoms: cp/vmfc energies come back as nonsense
# (water trimer: xtb +28677 kcal/mol, MOPAC +559 kcal/mol), so such inputs are refused up front.
GHOST_BLIND_PROGRAMS = frozenset(
    {"xtb", "mopac", "rdkit", "torchani", "openmm", "dftd3", "s-dftd3", "dftd4", "mp2d", "mace", "aimnet2"}
)
GHOST_AWARE_HINT = "nwchem, psi4, cfour, gamess, qchem, terachem or molpro"


def pydantic_message(err: pydantic.ValidationError) -> str:
    """One line per problem, with the field path, instead of pydantic's multi-paragraph dump."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(input)"
        lines.append(f"  {loc}: {e['msg']}")
    return "\n".join(lines)


def _electron_count(symbols: list[str], atoms: list[int]) -> int:
    return sum(periodictable.to_Z(symbols[i]) for i in atoms)


def fill_fragment_charges(mol: dict[str, Any]) -> dict[str, Any]:
    """Give every fragment an explicit charge and multiplicity.

    Neutral closed-shell fragments are inferred from electron counts; anything else must be stated by
    the user once the cluster is too big for qcelemental to reconcile.
    """
    frags = mol.get("fragments")
    if not frags or len(frags) < 2:
        return mol
    nfr = len(frags)
    have_chg = mol.get("fragment_charges") is not None
    have_mult = mol.get("fragment_multiplicities") is not None
    if have_chg and have_mult:
        return mol
    symbols = [str(s).capitalize() for s in mol["symbols"]]
    charges = mol.get("fragment_charges") or [0.0] * nfr
    try:
        unpaired_ok = all(
            (_electron_count(symbols, list(f)) - round(c)) % 2 == 0 for f, c in zip(frags, charges, strict=True)
        )
        total_charge = mol.get("molecular_charge")
        total_sum_ok = total_charge is None or math.isclose(float(total_charge), sum(charges))
    except (ValueError, TypeError, KeyError, OverflowError, NotAnElementError):
        # unknown element, NaN charge, a charge list of the wrong length: qcelemental's validation says which
        return mol
    total_mult = mol.get("molecular_multiplicity")
    consistent = total_sum_ok and total_mult in (
        None,
        1,
        1.0,
    )
    if unpaired_ok and consistent and (have_chg or total_charge in (None, 0, 0.0)):
        return {
            **mol,
            "fragment_charges": [float(c) for c in charges],
            "fragment_multiplicities": mol.get("fragment_multiplicities") or [1.0] * nfr,
        }
    if nfr < RECONCILE_LIMIT:
        return mol
    raise InputError(
        f"the molecule has {nfr} fragments but no fragment_charges/fragment_multiplicities, and they cannot "
        "be inferred as neutral singlets (an odd electron count or a molecular charge). Give both lists "
        "explicitly in the molecule (e.g. fragment_charges: [0, 0, ...], fragment_multiplicities: [1, 1, ...])."
    )


def _check_geometry(mol: dict[str, Any]) -> None:
    geom = mol.get("geometry")
    if geom is None:
        return
    flat = [float(x) for x in (geom if not hasattr(geom, "ravel") else geom.ravel())]
    bad = [x for x in flat if not math.isfinite(x)]
    if bad:
        raise InputError("molecule geometry holds NaN or infinite coordinates; every coordinate must be a number.")
    if flat and max(abs(x) for x in flat) > 1.0e5:
        raise InputError("molecule geometry has coordinates beyond 1e5 bohr; check the units and the numbers.")


def _check_fragments(mol: dict[str, Any]) -> None:
    frags = mol.get("fragments")
    natom = len(mol.get("symbols", []))
    if not frags or len(frags) < 2:
        raise InputError(
            "a many-body expansion needs at least two fragments; give molecule.fragments (or separate "
            "fragments with '--' lines in a plain molecule file)."
        )
    flat = [int(i) for f in frags for i in f]
    if any(len(f) == 0 for f in frags):
        raise InputError("molecule.fragments has an empty fragment; every fragment needs at least one atom.")
    if len(set(flat)) != len(flat):
        raise InputError("molecule.fragments lists an atom in more than one fragment; fragments must not overlap.")
    if sorted(flat) != list(range(natom)):
        missing = sorted(set(range(natom)) - set(flat))
        extra = sorted(set(flat) - set(range(natom)))
        raise InputError(
            f"molecule.fragments must cover every atom exactly once (missing atoms {missing[:10]}, "
            f"unknown atoms {extra[:10]})."
        )
    if flat != list(range(natom)):
        raise InputError(
            "fragments must be contiguous blocks of atoms in order (fragment 1 first, then 2, ...); "
            "reorder the atoms so each fragment's atoms follow one another."
        )


def installed_programs() -> list[str]:
    import qcengine

    return sorted(qcengine.list_available_programs())


def _check_programs(inp: ManyBodyInput) -> None:
    """A program QCEngine has no harness for can never run anywhere, so it is refused while planning."""
    import qcengine

    known = set(qcengine.list_all_programs())
    for name, atomic in inp.specification.specification.items():
        if atomic.program.lower() not in known:
            raise InputError(
                f"program {atomic.program!r} (model chemistry {name!r}) is not a QCEngine program. Installed here: "
                f"{', '.join(installed_programs()) or 'none'}; QCEngine also knows {', '.join(sorted(known))}."
            )


CHARGE_HINT = (
    ". The charges and multiplicities do not fit the electron counts: check molecular_charge and "
    "molecular_multiplicity against fragment_charges and fragment_multiplicities (multiplicity >= 1, and "
    "odd for an even number of electrons)."
)


def _check_fragment_lists(mol: dict[str, Any]) -> None:
    """qcelemental words a wrong-length list as 'Dimension mismatch ... sep + 1'; say it plainly."""
    nfr = len(mol["fragments"])
    for key in ("fragment_charges", "fragment_multiplicities"):
        values = mol.get(key)
        if values is not None and (not isinstance(values, list | tuple) or len(values) != nfr):
            count = len(values) if isinstance(values, list | tuple) else "no list of"
            raise InputError(f"molecule.{key} has {count} entries for {nfr} fragments; give one per fragment.")


def _check_specification(inp: ManyBodyInput) -> None:
    _check_programs(inp)
    spec = inp.specification
    kw = spec.keywords
    nfr = len(inp.molecule.fragments)
    if not kw.bsse_type:
        raise InputError("keywords.bsse_type is empty; give at least one of 'nocp', 'cp' or 'vmfc'.")
    if kw.levels is not None and not kw.levels:
        raise InputError("keywords.levels is empty; omit it, or map n-body orders to model chemistries.")
    if not kw.levels and len(spec.specification) > 1:
        raise InputError(
            f"specification.specification has {len(spec.specification)} model chemistries "
            f"({', '.join(sorted(spec.specification))}) but keywords.levels does not say which n-body order "
            "uses which; add levels, e.g. {1: 'big-basis', 2: 'small-basis'}."
        )
    if kw.embedding_charges:
        raise InputError("embedding_charges are experimental in QCManyBody and not supported by qcmb-fractal.")
    if kw.max_nbody is not None and not 1 <= kw.max_nbody <= nfr:
        raise InputError(f"max_nbody={kw.max_nbody} must lie between 1 and the number of fragments ({nfr}).")
    levels = kw.levels or {}
    for nb in levels:
        if nb != "supersystem" and not 1 <= int(nb) <= nfr:
            raise InputError(f"levels has n-body order {nb}; orders must lie between 1 and {nfr} (the fragments).")
    top = max((int(nb) for nb in levels if nb != "supersystem"), default=None)
    if kw.max_nbody is not None and top is not None and kw.max_nbody != top:
        # QCManyBody would silently replace the levels by {max_nbody: "(auto)"}
        raise InputError(
            f"max_nbody={kw.max_nbody} contradicts levels, whose highest n-body order is {top}; "
            f"leave max_nbody out or set it to {top} (the levels decide the expansion)."
        )
    for name in levels.values():
        if name not in spec.specification and not (name == "(auto)" and len(spec.specification) == 1):
            raise InputError(
                f"levels names model chemistry {name!r}, which is not a key of specification.specification "
                f"({sorted(spec.specification)})."
            )
    ghost_bsse = sorted({b.value for b in kw.bsse_type} & {"cp", "vmfc"})
    if ghost_bsse:
        used = set(levels.values()) or set(spec.specification)
        for name in sorted(used):
            atomic = spec.specification.get(name) or next(iter(spec.specification.values()))
            if atomic.program.lower() in GHOST_BLIND_PROGRAMS:
                raise InputError(
                    f"bsse_type {ghost_bsse} needs ghost atoms, but program {atomic.program!r} (model chemistry "
                    f"{name!r}) ignores them and would return wrong counterpoise energies. Use bsse_type "
                    f"['nocp'] with {atomic.program}, or a program that handles ghost atoms ({GHOST_AWARE_HINT})."
                )
    check_screening(inp)


def manybody_input(data: dict[str, Any] | ManyBodyInput) -> ManyBodyInput:
    """Validate a ManyBodyInput dict, filling fragment charges first so large clusters stay cheap."""
    if isinstance(data, ManyBodyInput):
        data = data.model_dump()
    if not isinstance(data, dict):
        raise InputError("the input must be a mapping with 'molecule' and 'specification' keys (QCSchema v2).")
    data = dict(data)
    mol = data.get("molecule")
    if isinstance(mol, Molecule):
        mol = mol.model_dump()
    if not isinstance(mol, dict) or "symbols" not in mol:
        raise InputError("the input has no molecule (a QCSchema molecule with symbols, geometry and fragments).")
    mol = {k: v for k, v in mol.items() if v is not None}
    _check_fragments(mol)
    _check_geometry(mol)
    _check_fragment_lists(mol)
    data["molecule"] = fill_fragment_charges(mol)
    try:
        inp = ManyBodyInput(**data)
    except pydantic.ValidationError as err:
        raise InputError("the many-body input is not valid QCSchema:\n" + pydantic_message(err)) from None
    except (ValueError, TypeError, KeyError, ValidationError, NotAnElementError, MoleculeFormatError) as err:
        # qcelemental's own errors derive from Exception only; they carry the useful chg/mult message
        hint = CHARGE_HINT if "chg/mult" in str(err) else ""
        raise InputError(f"the many-body input is not valid: {err}{hint}") from None
    _check_specification(inp)
    return inp


def parse_plain_molecule(text: str) -> dict[str, Any]:
    """Read 'Sym x y z' lines with '--' between fragments, optional 'charge mult' lines and 'units bohr'."""
    symbols: list[str] = []
    geometry: list[float] = []
    fragments: list[list[int]] = [[]]
    charges: list[float | None] = [None]
    mults: list[float | None] = [None]
    to_bohr = 1.0 / 0.52917721067
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#")[0].strip()
        if not line:
            continue
        words = line.split()
        low = line.lower()
        if line == "--":
            fragments.append([])
            charges.append(None)
            mults.append(None)
        elif low.startswith("units"):
            if words[-1].lower() in ("bohr", "au", "a.u."):
                to_bohr = 1.0
            elif words[-1].lower() not in ("angstrom", "ang", "a"):
                raise InputError(f"line {lineno}: units must be 'angstrom' or 'bohr', not {words[-1]!r}.")
        elif len(words) == 2 and not fragments[-1]:
            try:
                charges[-1], mults[-1] = float(words[0]), float(words[1])
            except ValueError:
                raise InputError(f"line {lineno}: expected 'charge multiplicity', got {line!r}.") from None
        elif len(words) == 4:
            try:
                xyz = [float(w) for w in words[1:]]
            except ValueError:
                raise InputError(f"line {lineno}: expected 'Symbol x y z', got {line!r}.") from None
            try:
                periodictable.to_Z(words[0])
            except Exception:
                raise InputError(f"line {lineno}: {words[0]!r} is not an element symbol.") from None
            fragments[-1].append(len(symbols))
            symbols.append(words[0].capitalize())
            geometry.extend(xyz)
        else:
            raise InputError(f"line {lineno}: cannot read {line!r} (want 'Symbol x y z', '--' or 'units ...').")
    mol: dict[str, Any] = {
        "symbols": symbols,
        "geometry": [g * to_bohr for g in geometry],
        "fragments": fragments,
    }
    if any(c is not None for c in charges):
        if any(c is None for c in charges):
            raise InputError("give a 'charge multiplicity' line for every fragment or for none.")
        mol["fragment_charges"] = charges
        mol["fragment_multiplicities"] = mults
    return mol


def plain_input(
    molecule: dict[str, Any],
    *,
    program: str,
    method: str,
    basis: str | None = None,
    bsse: list[str] | None = None,
    max_nbody: int | None = None,
    driver: str = "energy",
    keywords: dict[str, Any] | None = None,
) -> ManyBodyInput:
    """Build a single-level ManyBodyInput from command-line style options."""
    name = f"{program}-{method}" + (f"/{basis}" if basis else "")
    nfr = len(molecule.get("fragments") or [])
    nbody = max_nbody if max_nbody is not None else nfr
    return manybody_input(
        {
            "molecule": molecule,
            "specification": {
                "driver": driver,
                "keywords": {"bsse_type": bsse or ["nocp"], "max_nbody": nbody, "levels": {nbody: name}},
                "specification": {
                    name: {
                        "program": program,
                        "model": {"method": method, "basis": basis},
                        "driver": driver,
                        "keywords": keywords or {},
                    }
                },
            },
        }
    )


def load_input(path: str | Path, **options: Any) -> ManyBodyInput:
    """Load a QCSchema JSON/YAML ManyBodyInput, or a plain molecule file plus ``options``."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise InputError(f"cannot read input file {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text file; give a QCSchema .json/.yaml or a plain molecule file.") from None
    suffix = path.suffix.lower()
    if suffix in (".json", ".yaml", ".yml"):
        try:
            data = json.loads(text) if suffix == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as err:
            raise InputError(f"{path.name} is not valid {suffix[1:].upper()}: {err}") from None
        return manybody_input(data)
    if not options.get("program") or not options.get("method"):
        raise InputError(
            f"{path.name} is a plain molecule file, so --program and --method are needed "
            "(or give a QCSchema ManyBodyInput as .json/.yaml)."
        )
    return plain_input(parse_plain_molecule(text), **{k: v for k, v in options.items() if v is not None})
