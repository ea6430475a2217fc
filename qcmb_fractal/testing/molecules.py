"""Water clusters with sensible hydrogen bonds, shared by tests, examples and benchmarks.

The trimer is QCManyBody's own test trimer (``qcmanybody/tests/common.py``), so our references use
the geometry its authors validated. Larger clusters are built on a cubic grid of oxygens 2.85 Å apart
(a typical O···O hydrogen-bond distance); each water donates one hydrogen straight at a neighbour that
does not donate back, and turns its second hydrogen to stay as far as possible from every other atom.
That gives O–H···O contacts of ~1.9 Å and no clashes, deterministically, for any size.
"""

import itertools
import math

import numpy as np
from qcelemental.models.v2 import Molecule

ANGSTROM_TO_BOHR = 1.0 / 0.52917721067
OH_BOND = 0.9572  # Å, experimental gas-phase water
HOH_ANGLE = math.radians(104.52)
OO_DISTANCE = 2.85  # Å

WATER_TRIMER_BOHR = """
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


def water_trimer() -> Molecule:
    """QCManyBody's test water trimer."""
    return Molecule.from_data(WATER_TRIMER_BOHR)


def _grid(n: int) -> np.ndarray:
    """The first n points of the most compact box of grid points (x fastest), in units of the spacing."""
    nx = math.ceil(n ** (1 / 3))
    ny = math.ceil(math.sqrt(n / nx))
    nz = math.ceil(n / (nx * ny))
    points = [(i, j, k) for k, j, i in itertools.product(range(nz), range(ny), range(nx))]
    return np.array(points[:n], dtype=float)


def _perpendicular(v: np.ndarray) -> np.ndarray:
    trial = np.array([0.0, 0.0, 1.0]) if abs(v[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    p = np.cross(v, trial)
    return p / np.linalg.norm(p)


def _second_hydrogen(o: np.ndarray, axis: np.ndarray, others: list[np.ndarray]) -> tuple[np.ndarray, float]:
    """The second hydrogen of a water whose first O–H lies along ``axis``, as far from ``others`` as it can get."""
    perp = _perpendicular(axis)
    other = np.cross(axis, perp)
    best, best_score = o, -1.0
    for step in range(24):
        phi = 2 * math.pi * step / 24
        direction = math.cos(HOH_ANGLE) * axis + math.sin(HOH_ANGLE) * (math.cos(phi) * perp + math.sin(phi) * other)
        h2 = o + OH_BOND * direction
        score = min((float(np.linalg.norm(h2 - p)) for p in others), default=1.0)
        if score > best_score + 1e-9:
            best, best_score = h2, score
    return best, best_score


def water_cluster_xyz(n: int) -> list[tuple[str, np.ndarray]]:
    """Atoms (symbol, position in Å) of an n-water cluster, three per water in O, H, H order."""
    if n < 1:
        raise ValueError("a water cluster needs at least one water")
    oxygens = _grid(n) * OO_DISTANCE
    donates_to: dict[int, int] = {}
    atoms: list[tuple[str, np.ndarray]] = []
    hydrogens: list[np.ndarray] = []
    for i, o in enumerate(oxygens):
        others = [p for k, p in enumerate(oxygens) if k != i] + hydrogens
        dist = np.linalg.norm(oxygens - o, axis=1)
        targets = [j for j in range(n) if j != i and dist[j] < OO_DISTANCE * 1.01 and donates_to.get(j) != i]
        # donate to a neighbour that does not donate back; with none, point the first O–H away from the nearest
        axes = {j: (oxygens[j] - o) / dist[j] for j in targets}
        if not axes and n > 1:
            nearest = min((j for j in range(n) if j != i), key=lambda j: dist[j])
            axes = {-1: (o - oxygens[nearest]) / dist[nearest]}
        axes = axes or {-1: np.array([1.0, 0.0, 0.0])}
        best = None
        for j, axis in axes.items():
            h1 = o + OH_BOND * axis
            h2, score = _second_hydrogen(o, axis, others)
            score = min(score, *(float(np.linalg.norm(h1 - p)) for p in hydrogens)) if hydrogens else score
            if best is None or score > best[0] + 1e-9:
                best = (score, j, h1, h2)
        assert best is not None
        _, j, h1, h2 = best
        if j >= 0:
            donates_to[i] = j
        atoms += [("O", o), ("H", h1), ("H", h2)]
        hydrogens += [h1, h2]
    return atoms


def water_cluster_text(n: int) -> str:
    """The cluster as a plain molecule file (``Symbol x y z`` in Å, ``--`` between waters)."""
    atoms = water_cluster_xyz(n)
    lines: list[str] = []
    for i in range(n):
        if i:
            lines.append("--")
        lines += [f"{s} {x:12.6f} {y:12.6f} {z:12.6f}" for s, (x, y, z) in atoms[3 * i : 3 * i + 3]]
    return "\n".join(lines) + "\n"


def water_cluster(n: int, shift: float = 0.0) -> Molecule:
    """An n-water cluster as a QCSchema v2 molecule with explicit neutral-singlet fragments.

    ``shift`` (bohr) moves it rigidly: the same energies, but other molecules to a QCFractal server, so
    tests sharing one server never find each other's records.
    """
    atoms = water_cluster_xyz(n)
    return Molecule(
        symbols=[s for s, _ in atoms],
        geometry=np.array([p for _, p in atoms]).ravel() * ANGSTROM_TO_BOHR + shift,
        fragments=[[3 * i, 3 * i + 1, 3 * i + 2] for i in range(n)],
        fragment_charges=[0.0] * n,
        fragment_multiplicities=[1] * n,
        molecular_charge=0.0,
        molecular_multiplicity=1,
    )
