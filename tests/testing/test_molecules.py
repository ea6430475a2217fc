"""The random water clusters the screening benchmark runs on: reproducible, sensible, free of clashes."""

import itertools
import math

import numpy as np
import pytest

from qcmb_fractal.testing.molecules import (
    CLASH,
    FIRST_SHELL,
    HOH_ANGLE,
    OH_BOND,
    random_water_cluster,
    random_water_cluster_xyz,
)


@pytest.mark.parametrize(("n", "seed"), [(6, 1), (12, 5), (24, 9)])
def test_random_clusters_are_hydrogen_bonded_without_clashes(n: int, seed: int) -> None:
    atoms = random_water_cluster_xyz(n, seed)
    assert [s for s, _ in atoms] == ["O", "H", "H"] * n
    pos = np.array([p for _, p in atoms])
    for i in range(n):
        o, h1, h2 = pos[3 * i : 3 * i + 3]
        assert np.linalg.norm(h1 - o) == pytest.approx(OH_BOND) and np.linalg.norm(h2 - o) == pytest.approx(OH_BOND)
        cos = float((h1 - o) @ (h2 - o)) / OH_BOND**2
        assert math.acos(cos) == pytest.approx(HOH_ANGLE, abs=1e-9)
    for a, b in itertools.combinations(range(3 * n), 2):
        if a // 3 != b // 3:
            kind = tuple(sorted((atoms[a][0], atoms[b][0])))
            assert np.linalg.norm(pos[a] - pos[b]) >= CLASH[kind] - 1e-9, (a, b)
    oxygens = pos[::3]
    dist = np.linalg.norm(oxygens[:, None] - oxygens[None], axis=-1)
    shell = (dist < FIRST_SHELL).sum(axis=1) - 1
    assert shell.max() <= 4 and shell.min() >= 1  # liquid-like first shells, nobody alone
    donated = sum(
        1
        for i in range(n)
        for h in pos[3 * i + 1 : 3 * i + 3]
        if any(1.55 <= np.linalg.norm(oxygens[j] - h) <= 2.35 for j in range(n) if j != i)
    )
    assert donated >= n  # at least one hydrogen bond donated per water on average


def test_random_clusters_are_reproducible_and_differ_by_seed() -> None:
    one = random_water_cluster(8, 3)
    assert np.array_equal(one.geometry, random_water_cluster(8, 3).geometry)
    assert not np.allclose(one.geometry, random_water_cluster(8, 4).geometry)
    assert [list(f) for f in one.fragments] == [[3 * i, 3 * i + 1, 3 * i + 2] for i in range(8)]
    assert one.molecular_charge == 0
    with pytest.raises(ValueError, match="at least one water"):
        random_water_cluster_xyz(0, 1)
