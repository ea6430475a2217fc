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


# Random clusters: O–O contacts and the distances below which two molecules' atoms clash (Å).
OO_CONTACT = (2.65, 2.95)
FIRST_SHELL = 3.3
HBOND_HO = (1.55, 2.35)
CLASH = {("O", "O"): 2.5, ("H", "O"): 1.55, ("H", "H"): 1.5}


def _random_oxygens(n: int, rng: np.random.Generator, tries: int = 48) -> np.ndarray:
    """Oxygens grown one at a time at a hydrogen-bond distance from one already placed, each at the best of
    ``tries`` random spots: the most neighbours, nearest the centre, but never more than four neighbours
    within 3.3 Å for any oxygen (liquid water's first shell), so the cluster is compact and not overpacked."""
    oxygens = [np.zeros(3)]
    while len(oxygens) < n:
        placed = np.array(oxygens)
        centre = placed.mean(axis=0)
        shell = (np.linalg.norm(placed[:, None] - placed[None], axis=-1) < FIRST_SHELL).sum(axis=1) - 1
        best, best_score = None, -np.inf
        for _ in range(tries):
            anchor = rng.integers(len(placed))
            if shell[anchor] >= 4:
                continue
            direction = rng.normal(size=3)
            spot = placed[anchor] + rng.uniform(*OO_CONTACT) * direction / np.linalg.norm(direction)
            dist = np.linalg.norm(placed - spot, axis=1)
            near = dist < FIRST_SHELL
            if dist.min() < OO_CONTACT[0] or np.count_nonzero(near) > 4 or np.any(shell[near] >= 4):
                continue
            score = np.count_nonzero(near) - 0.1 * float(np.linalg.norm(spot - centre))
            if score > best_score:
                best, best_score = spot, score
        if best is not None:
            oxygens.append(best)
    return np.array(oxygens)


def _unit_perp(axis: np.ndarray, phi: float) -> np.ndarray:
    """The unit vector perpendicular to ``axis`` at angle ``phi`` around it."""
    p = _perpendicular(axis)
    return math.cos(phi) * p + math.sin(phi) * np.cross(axis, p)


def _second(axis: np.ndarray, phi: float) -> np.ndarray:
    """The second O–H direction, 104.52° from ``axis``, turned by ``phi`` around it."""
    return math.cos(HOH_ANGLE) * axis + math.sin(HOH_ANGLE) * _unit_perp(axis, phi)


def _rotations(rng: np.random.Generator, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random pairs of O–H directions 104.52° apart."""
    out = []
    for _ in range(count):
        a = rng.normal(size=3)
        a /= np.linalg.norm(a)
        out.append((a, _second(a, rng.uniform(0, 2 * math.pi))))
    return out


def _toward(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """O–H directions 104.52° apart that point as nearly as they can along unit vectors ``a`` and ``b``."""
    bisector = a + b
    bisector /= np.linalg.norm(bisector)
    in_plane = a - b
    in_plane -= bisector * float(in_plane @ bisector)
    in_plane /= np.linalg.norm(in_plane)
    half = HOH_ANGLE / 2
    return (
        math.cos(half) * bisector + math.sin(half) * in_plane,
        math.cos(half) * bisector - math.sin(half) * in_plane,
    )


def random_water_cluster_xyz(n: int, seed: int) -> list[tuple[str, np.ndarray]]:
    """Atoms (symbol, position in Å) of a random n-water cluster, reproducible from ``seed``.

    Oxygens grow compactly at 2.65–2.95 Å from a neighbour; then each water, in random order, takes the
    orientation that donates the most hydrogen bonds (H···O 1.55–2.35 Å, O–H···O ≥ 140°) to oxygens that
    accept fewer than two, without clashing with any atom placed so far; raises if a clash remains.
    """
    if n < 1:
        raise ValueError("a water cluster needs at least one water")
    rng = np.random.default_rng(seed)
    oxygens = _random_oxygens(n, rng)
    hydrogens: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    accepted = [0] * n
    for i in rng.permutation(n):
        o = oxygens[i]
        near = [j for j in range(n) if j != i and np.linalg.norm(oxygens[j] - o) < FIRST_SHELL and accepted[j] < 2]
        units = {j: (oxygens[j] - o) / np.linalg.norm(oxygens[j] - o) for j in near}
        options = [_toward(units[j], units[k]) for j, k in itertools.combinations(near, 2)]
        options += [(units[j], _second(units[j], phi)) for j in near for phi in np.linspace(0, 2 * math.pi, 12, False)]
        options += _rotations(rng, 32)
        others = np.array([oxygens[k] for k in range(n) if k != i] + [h for pair in hydrogens.values() for h in pair])
        limits = np.array([CLASH[("H", "O")]] * (n - 1) + [CLASH[("H", "H")]] * (2 * len(hydrogens)))
        best, best_score, best_bonds = None, -np.inf, []
        for u1, u2 in options:
            h1, h2 = o + OH_BOND * u1, o + OH_BOND * u2
            gap = float((np.linalg.norm(others[None] - np.array([h1, h2])[:, None], axis=-1) - limits).min())
            if gap < 0:
                continue
            bonds = [j for j in near for h, u in ((h1, u1), (h2, u2)) if _hbond(o, h, oxygens[j])]
            score = 10 * len(set(bonds)) + min(gap, 0.5)
            if score > best_score:
                best, best_score, best_bonds = (h1, h2), score, bonds
        if best is None:
            raise RuntimeError(f"no clash-free orientation for water {i} of {n} (seed {seed}); try another seed")
        hydrogens[i] = best
        for j in set(best_bonds):
            accepted[j] += 1
    atoms: list[tuple[str, np.ndarray]] = []
    for i in range(n):
        atoms += [("O", oxygens[i]), ("H", hydrogens[i][0]), ("H", hydrogens[i][1])]
    return atoms


def _hbond(o: np.ndarray, h: np.ndarray, acceptor: np.ndarray) -> bool:
    ho = float(np.linalg.norm(acceptor - h))
    if not HBOND_HO[0] <= ho <= HBOND_HO[1]:
        return False
    oh, ha = h - o, acceptor - h
    return float(oh @ ha) / (np.linalg.norm(oh) * np.linalg.norm(ha)) >= math.cos(math.radians(40))


def random_water_cluster(n: int, seed: int) -> Molecule:
    """A random n-water cluster (see :func:`random_water_cluster_xyz`) as a QCSchema v2 molecule."""
    atoms = random_water_cluster_xyz(n, seed)
    return Molecule(
        symbols=[s for s, _ in atoms],
        geometry=np.array([p for _, p in atoms]).ravel() * ANGSTROM_TO_BOHR,
        fragments=[[3 * i, 3 * i + 1, 3 * i + 2] for i in range(n)],
        fragment_charges=[0.0] * n,
        fragment_multiplicities=[1] * n,
        molecular_charge=0.0,
        molecular_multiplicity=1,
    )
