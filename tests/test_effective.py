"""Effective models: symmetries, local updates, the linear limit, gradients and the linear fit (DESIGN §3)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from slmc_hpc.core.learning import fit_linear
from slmc_hpc.systems.double_exchange.effective import make_effective
from slmc_hpc.systems.double_exchange.lattice import Lattice
from slmc_hpc.systems.double_exchange.physics import random_spins

torch.set_num_threads(1)


def config(kind, n_J=3, n_layers=2, n_att=3):
    return SimpleNamespace(kind=kind, n_J=n_J, n_layers=n_layers, n_att=n_att, load=None)


def random_model(kind, lattice, seed=0, **sizes):
    """A model with generic (random, non-zero) parameters, so no symmetry holds by accident."""
    model = make_effective(config(kind, **sizes), lattice)
    rng = np.random.default_rng(seed)
    model.set_parameters({k: rng.normal(scale=0.5, size=v.shape) for k, v in model.parameters().items()})
    return model


def orthogonal_matrices(seed):
    rotation = Rotation.random(random_state=seed).as_matrix()
    return [rotation, -rotation, rotation @ np.diag([1.0, 1.0, -1.0])]


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_invariant_under_global_o3_and_translations(kind):
    lattice = Lattice(4, 6)
    model = random_model(kind, lattice)
    spins = random_spins(np.random.default_rng(1), (3, lattice.n_sites))
    energy = model.energy(spins)
    for matrix in orthogonal_matrices(2):
        np.testing.assert_allclose(model.energy(spins @ matrix.T), energy, rtol=0, atol=1e-10)
    for dx, dy in [(1, 0), (0, 1), (3, 5)]:
        np.testing.assert_allclose(model.energy(lattice.translate(spins, dx, dy)), energy, rtol=0, atol=1e-10)


def test_effective_spins_are_equivariant_and_normalised():
    lattice = Lattice(4, 4)
    model = random_model("transformer", lattice, n_layers=3)
    spins = random_spins(np.random.default_rng(3), (2, lattice.n_sites))
    effective = model.effective_spins(spins)
    np.testing.assert_allclose(np.linalg.norm(effective, axis=-1), 1.0, atol=1e-12)
    assert np.abs(effective - spins).max() > 0.1  # the layers do something
    for matrix in orthogonal_matrices(4):
        np.testing.assert_allclose(model.effective_spins(spins @ matrix.T), effective @ matrix.T, atol=1e-10)
    moved = model.effective_spins(lattice.translate(spins, 1, 2))
    np.testing.assert_allclose(moved, lattice.translate(effective, 1, 2), atol=1e-10)


def test_zero_attention_and_no_biquadratic_term_is_the_linear_model():
    lattice = Lattice(6, 6)
    transformer = random_model("transformer", lattice, n_J=3, n_layers=2, n_att=6)
    parameters = transformer.parameters()
    zeros = {name: np.zeros_like(parameters[name]) for name in ("attention", "biquadratic")}
    transformer.set_parameters({**parameters, **zeros})
    linear = make_effective(config("linear", n_J=3), lattice)
    linear.set_parameters({"e0": parameters["e0"], "couplings": parameters["couplings"]})
    spins = random_spins(np.random.default_rng(5), (4, lattice.n_sites))
    np.testing.assert_allclose(transformer.energy(spins), linear.energy(spins), rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "transformer"])
@pytest.mark.parametrize("shape", [(2, 2), (3, 4), (6, 6)])
def test_delta_energy_matches_full_evaluation(kind, shape):
    """Small lattices alias shell vectors onto the site itself and onto each other: still exact."""
    lattice = Lattice(*shape)
    model = random_model(kind, lattice, n_J=6, n_layers=1, n_att=2)
    rng = np.random.default_rng(6)
    spins = random_spins(rng, (5, lattice.n_sites))
    sites = rng.integers(0, lattice.n_sites, 5)
    new_spins = random_spins(rng, (5,))
    after = spins.copy()
    after[np.arange(5), sites] = new_spins
    expected = model.energy(after) - model.energy(spins)
    np.testing.assert_allclose(model.delta_energy(spins, sites, new_spins), expected, rtol=0, atol=1e-10)
    current = model.energy(spins)
    np.testing.assert_allclose(model.delta_energy(spins, sites, new_spins, current), expected, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["linear", "transformer"])
@pytest.mark.parametrize("size", [6, 12])  # at 12x12 a batched matrix-vector product was not batch-invariant
def test_rows_do_not_depend_on_the_batch_bitwise(kind, size):
    lattice = Lattice(size, size)
    model = random_model(kind, lattice, n_att=6)
    rng = np.random.default_rng(7)
    spins = random_spins(rng, (8, lattice.n_sites))
    energy = model.energy(spins)
    for b in range(8):
        assert model.energy(spins[b : b + 1])[0] == energy[b]
    assert np.array_equal(model.energy(spins[::-1].copy())[::-1], energy)
    sites, new_spins = rng.integers(0, lattice.n_sites, 8), random_spins(rng, (8,))
    delta = model.delta_energy(spins, sites, new_spins, energy)
    assert np.array_equal(model.delta_energy(spins[3:5], sites[3:5], new_spins[3:5], energy[3:5]), delta[3:5])


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_autograd_gradient_matches_finite_differences(kind):
    lattice = Lattice(4, 4)
    model = random_model(kind, lattice, n_layers=2, n_att=2)
    module = model.torch_module()
    spins = torch.from_numpy(random_spins(np.random.default_rng(8), (3, lattice.n_sites)))
    weights = torch.tensor([0.3, -1.2, 0.7], dtype=torch.float64)

    def objective():
        return (module(spins) * weights).sum()

    module.zero_grad()
    objective().backward()
    step = 1e-6
    for name, p in module.named_parameters():
        flat, grad = p.data.view(-1), p.grad.view(-1)
        for index in range(flat.numel()):
            saved = flat[index].item()
            with torch.no_grad():
                flat[index] = saved + step
                up = objective().item()
                flat[index] = saved - step
                down = objective().item()
                flat[index] = saved
            numeric = (up - down) / (2 * step)
            assert abs(numeric - grad[index].item()) < 1e-6 * max(1.0, abs(numeric)), (name, index)


def test_linear_fit_recovers_known_couplings():
    lattice = Lattice(6, 6)
    truth = make_effective(config("linear", n_J=3), lattice)
    truth.set_parameters({"e0": np.array(-12.5), "couplings": np.array([0.8, -0.25, 0.1])})
    spins = random_spins(np.random.default_rng(9), (40, lattice.n_sites))
    model = make_effective(config("linear", n_J=3), lattice)
    fit_linear(model, spins, truth.energy(spins), scale=model.lattice.n_sites)
    np.testing.assert_allclose(model.parameters()["e0"], -12.5, atol=1e-10)
    np.testing.assert_allclose(model.parameters()["couplings"], [0.8, -0.25, 0.1], atol=1e-10)


def test_transformer_readout_starts_from_the_linear_fit():
    lattice = Lattice(4, 4)
    truth = make_effective(config("linear", n_J=2), lattice)
    truth.set_parameters({"e0": np.array(3.0), "couplings": np.array([0.5, 0.2])})
    spins = random_spins(np.random.default_rng(10), (30, lattice.n_sites))
    model = make_effective(config("transformer", n_J=2, n_layers=2, n_att=2), lattice)
    fit_linear(
        model, spins, truth.energy(spins), scale=model.lattice.n_sites
    )  # W^V = 0 at initialisation: the read-out sees S itself
    np.testing.assert_allclose(model.energy(spins), truth.energy(spins), atol=1e-10)


def test_biquadratic_readout_is_the_four_spin_shell_sum():
    """With W^V = 0 the read-out sees the bare spins: E_0 - Σ J_n Σ S·S + Σ K_n Σ (S·S)², pairs once."""
    lattice = Lattice(4, 6)
    model = random_model("transformer", lattice, n_J=4, n_layers=1, n_att=2)
    parameters = model.parameters()
    parameters["attention"][:, 2] = 0.0  # no values: effective spins are the bare spins
    model.set_parameters(parameters)
    spins = random_spins(np.random.default_rng(6), (5, lattice.n_sites))
    expected = np.full(5, float(parameters["e0"]))
    for n in range(1, 5):
        dots = np.einsum("bia,biza->biz", spins, spins[:, lattice.neighbors(n)])
        expected += 0.5 * (-parameters["couplings"][n - 1] * dots + parameters["biquadratic"][n - 1] * dots**2).sum(
            axis=(1, 2)
        )
    np.testing.assert_allclose(model.energy(spins), expected, rtol=0, atol=1e-10)


def test_linear_fit_recovers_known_biquadratic_couplings():
    lattice = Lattice(6, 6)
    truth = make_effective(config("transformer", n_J=3, n_layers=1, n_att=2), lattice)
    parameters = truth.parameters()
    readout = {"e0": np.array(-4.0), "couplings": np.array([0.6, -0.2, 0.05]), "biquadratic": [0.1, 0.03, -0.02]}
    truth.set_parameters({**parameters, **readout})
    spins = random_spins(np.random.default_rng(7), (60, lattice.n_sites))
    model = make_effective(config("transformer", n_J=3, n_layers=1, n_att=2), lattice)
    fit_linear(model, spins, truth.energy(spins), scale=model.lattice.n_sites)
    np.testing.assert_allclose(model.parameters()["biquadratic"], [0.1, 0.03, -0.02], atol=1e-9)
    np.testing.assert_allclose(model.parameters()["couplings"], [0.6, -0.2, 0.05], atol=1e-9)


def test_a_model_stored_without_biquadratic_terms_reads_as_k_zero():
    lattice = Lattice(4, 4)
    model = random_model("transformer", lattice, n_J=2, n_layers=1, n_att=2)
    older = {name: value for name, value in model.parameters().items() if name != "biquadratic"}
    model.set_parameters(older)
    assert np.array_equal(model.parameters()["biquadratic"], np.zeros(2))


@pytest.mark.parametrize("shape", [(2, 2), (3, 4), (6, 6)])
def test_biquadratic_linear_model_delta_energy_matches_full_evaluation(shape):
    """The proposal model of the nested chain: ΔH of one move, with shells that alias onto the site itself."""
    from slmc_hpc.systems.double_exchange.effective.linear import LinearModel

    lattice = Lattice(*shape)
    model = LinearModel(lattice, lattice.n_distance_shells, biquadratic=True)
    rng = np.random.default_rng(8)
    model.set_readout(0.7, rng.normal(size=model.n_readout - 1))
    spins = random_spins(rng, (6, lattice.n_sites))
    sites, new_spins = rng.integers(0, lattice.n_sites, 6), random_spins(rng, (6,))
    after = spins.copy()
    after[np.arange(6), sites] = new_spins
    expected = model.energy(after) - model.energy(spins)
    np.testing.assert_allclose(model.delta_energy(spins, sites, new_spins), expected, rtol=0, atol=1e-10)
    stored = model.parameters()
    assert set(stored) == {"e0", "couplings", "biquadratic"} and model.n_parameters() == 1 + 2 * model.n_J
