"""Physics conventions of DESIGN §1, pinned by independently computed reference values."""

import json

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from slmc_hpc.systems.double_exchange.lattice import Lattice, shell_vectors
from slmc_hpc.systems.double_exchange.physics import DoubleExchange, random_spins
from tests.conftest import REFERENCE


def reference_configurations(lx: int = 6, ly: int = 6) -> dict[str, np.ndarray]:
    n = lx * ly
    x, y = np.arange(n) % lx, np.arange(n) // lx
    zero = np.zeros(n)
    rnd = np.random.default_rng(12345).normal(size=(n, 3))
    return {
        "ferro": np.tile([0.0, 0.0, 1.0], (n, 1)),
        "neel": np.stack([zero, zero, (-1.0) ** (x + y)], axis=1),
        "spiral": np.stack([np.cos(2 * np.pi * x / lx), np.sin(2 * np.pi * x / lx), zero], axis=1),
        "random": rnd / np.linalg.norm(rnd, axis=1, keepdims=True),
    }


def test_shells_follow_design_order():
    shells = shell_vectors(6)
    assert shells[0] == [(0, 0)]
    lengths = [dx * dx + dy * dy for dx, dy in (s[0] for s in shells[1:])]
    assert lengths == [1, 2, 4, 5, 8, 9]
    assert [len(s) for s in shells] == [1, 4, 4, 4, 8, 4, 4]


def test_small_lattice_aliases_accumulate():
    lat = Lattice(2, 1)
    # Shell 1 on 2x1: (±1, 0) reach the other site, (0, ±1) come back to the site itself.
    assert sorted(lat.neighbors(1)[0].tolist()) == [0, 0, 1, 1]


@pytest.mark.parametrize("case", range(4))
def test_omega_matches_reference(case):
    ref = json.loads((REFERENCE / "omega_6x6.json").read_text())
    c = ref["cases"][case]
    model = DoubleExchange(
        lx=6, ly=6, hoppings={int(k): v for k, v in ref["hoppings"].items()}, J=c["J"], mu=c["mu"], T=c["T"]
    )
    confs = reference_configurations()
    omega = model.omega(np.stack(list(confs.values()))) / model.n_sites
    expected = np.array([c["omega_per_site"][k] for k in confs])
    np.testing.assert_allclose(omega, expected, rtol=1e-9, atol=0)


def test_hamiltonian_is_hermitian_for_further_hoppings_and_negative_j():
    model = DoubleExchange(lx=4, ly=6, hoppings={1: 1.0, 2: -0.3, 3: 0.1}, J=-2.0, mu=0.3, T=0.1)
    h = model.hamiltonian(random_spins(np.random.default_rng(1), (3, model.n_sites)))
    np.testing.assert_allclose(h, np.conj(np.swapaxes(h, -1, -2)), atol=0)


@pytest.mark.parametrize("reflect", [False, True])
def test_omega_invariant_under_global_o3(reflect):
    model = DoubleExchange(lx=6, ly=6, hoppings={1: 1.0, 2: 0.2}, J=1.5, mu=-0.5, T=0.05)
    rng = np.random.default_rng(7)
    spins = random_spins(rng, (4, model.n_sites))
    rotation = Rotation.random(random_state=3).as_matrix()
    if reflect:
        rotation = rotation @ np.diag([1.0, 1.0, -1.0])
    np.testing.assert_allclose(model.omega(spins @ rotation.T), model.omega(spins), rtol=1e-10)


def test_omega_invariant_under_translation():
    model = DoubleExchange(lx=6, ly=4, hoppings={1: 1.0, 3: 0.1}, J=1.0, mu=0.0, T=0.05)
    spins = random_spins(np.random.default_rng(8), (3, model.n_sites))
    moved = model.lattice.translate(spins, 2, 3)
    assert not np.allclose(moved, spins)
    np.testing.assert_allclose(model.omega(moved), model.omega(spins), rtol=1e-10)


def test_zero_temperature_limit():
    spins = random_spins(np.random.default_rng(9), (2, 36))
    zero = DoubleExchange(6, 6, {1: 1.0}, 1.0, 0.1, 0.0).omega(spins)
    cold = DoubleExchange(6, 6, {1: 1.0}, 1.0, 0.1, 1e-4).omega(spins)
    np.testing.assert_allclose(cold, zero, atol=1e-2)


def test_observables_on_known_configurations():
    model = DoubleExchange(6, 6, {1: 1.0}, 1.0, 0.0, 0.05)
    confs = reference_configurations()
    obs = model.observables(np.stack([confs["ferro"], confs["neel"]]))
    np.testing.assert_allclose(obs["m"], [1.0, 0.0], atol=1e-14)
    np.testing.assert_allclose(obs["ms"], [0.0, 1.0], atol=1e-14)
    np.testing.assert_allclose(obs["nn"], [1.0, -1.0], atol=1e-14)
    # S(q) of the ferromagnet is N at q = 0; of the Néel state N at (π, π).
    assert obs["sq"][0, 0, 0] == pytest.approx(36) and obs["sq"][1, 3, 3] == pytest.approx(36)
    # Half filling at μ = 0 (particle-hole symmetric bipartite lattice).
    np.testing.assert_allclose(obs["density"], 1.0, atol=1e-12)
    assert obs["omega"].shape == (2,) and obs["electron_energy"].shape == (2,)
