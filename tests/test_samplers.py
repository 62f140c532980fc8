"""Samplers against results computed without Monte Carlo (DESIGN §2).

On two sites (lx=2, ly=1) Ω depends only on c = S_1·S_2, and c is uniform on [-1, 1] under the
uniform measure of two spins, so <c> = ∫ c W(c) dc / ∫ W(c) dc is a 1D quadrature. Chains are
independent, so the error bar is the standard error of the per-chain means.
"""

import numpy as np
import pytest
from scipy.integrate import quad

from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
from slmc_hpc.systems.double_exchange.physics import DoubleExchange
from slmc_hpc.systems.double_exchange.samplers import ExactLocalSweep, draw_proposals, init_chains, slmc_chain
from tests.conftest import REPO, mpirun

TWO_SITE_POINTS = [(2.0, 0.3, 0.0), (3.0, 0.3, -1.5)]  # (J, T, mu): <c> = 0.177 and -0.374


def two_site_expectation(model: DoubleExchange) -> float:
    def omega(c: float) -> float:
        return float(model.omega(np.array([[0.0, 0.0, 1.0], [np.sqrt(1.0 - c * c), 0.0, c]])))

    reference = omega(1.0)
    weight = lambda c: np.exp(-(omega(c) - reference) / model.T)
    return quad(lambda c: c * weight(c), -1, 1)[0] / quad(weight, -1, 1)[0]


def chain_means_of_bond(state_history: list[np.ndarray]) -> np.ndarray:
    bonds = np.array([np.einsum("bk,bk->b", s[:, 0], s[:, 1]) for s in state_history])  # [steps, B]
    return bonds.mean(axis=0)


def assert_within_three_sigma(chain_means: np.ndarray, exact: float) -> None:
    mean = chain_means.mean()
    error = chain_means.std(ddof=1) / np.sqrt(len(chain_means))
    assert abs(mean - exact) < 3 * error, f"MC {mean:.5f} ± {error:.5f} vs quadrature {exact:.5f}"
    assert error < 0.02, "test too short to be meaningful"


@pytest.mark.parametrize("J,T,mu", TWO_SITE_POINTS)
def test_exact_local_mc_matches_quadrature(J, T, mu):
    model = DoubleExchange(lx=2, ly=1, hoppings={1: 1.0}, J=J, mu=mu, T=T)
    sampler = ExactLocalSweep(SpinAction(make_evaluator("dense", model)))
    state = init_chains(sampler.action, seed=11, chains=range(128))
    for _ in range(50):
        sampler.step(state)
    history = []
    for _ in range(400):
        sampler.step(state)
        history.append(state.config.copy())
    assert_within_three_sigma(chain_means_of_bond(history), two_site_expectation(model))


class WrongCouplingModel:
    """A deliberately poor deterministic H_eff = -a S_1·S_2 (the SLMC result must not depend on it)."""

    kind = "test"

    def __init__(self, coupling: float):
        self.coupling = coupling

    def energy(self, spins):
        return -self.coupling * np.einsum("bk,bk->b", spins[:, 0], spins[:, 1])

    def delta_energy(self, spins, sites, new_spins, energy=None):
        after = spins.copy()
        after[np.arange(len(sites)), sites] = new_spins
        return self.energy(after) - self.energy(spins)

    def new_proposal(self):  # a NestedProposal's refit is the learner's business, not tested here
        raise NotImplementedError

    def fit_proposal(self, configs, comm=None, energy=None, features=None):
        raise NotImplementedError


@pytest.mark.parametrize("coupling", [0.0, -0.5])
def test_slmc_with_a_poor_model_matches_quadrature(coupling):
    J, T, mu = TWO_SITE_POINTS[1]
    model = DoubleExchange(lx=2, ly=1, hoppings={1: 1.0}, J=J, mu=mu, T=T)
    sampler = slmc_chain(SpinAction(make_evaluator("dense", model)), WrongCouplingModel(coupling), inner_sweeps=2)
    state = init_chains(sampler.action, seed=12, chains=range(128))
    for _ in range(50):
        sampler.step(state)
    history, acceptance = [], []
    for _ in range(600):
        info = sampler.step(state)
        acceptance.append(info.accepted.mean())
        history.append(state.config.copy())
    assert 0.05 < np.mean(acceptance) < 0.95
    assert_within_three_sigma(chain_means_of_bond(history), two_site_expectation(model))


def test_chain_history_does_not_depend_on_batch_split():
    model = DoubleExchange(lx=4, ly=2, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.1)
    action = SpinAction(make_evaluator("dense", model))
    whole = init_chains(action, seed=5, chains=range(4))
    parts = [init_chains(action, seed=5, chains=range(0, 1)), init_chains(action, seed=5, chains=range(1, 4))]
    for _ in range(3):
        ExactLocalSweep(action).step(whole)
        for part in parts:
            ExactLocalSweep(action).step(part)
    assert np.array_equal(whole.config, np.concatenate([p.config for p in parts]))


@pytest.mark.mpi
def test_exact_mc_same_histories_on_one_and_two_ranks(tmp_path):
    script = str(REPO / "tests" / "mpi_scripts" / "sampler_histories.py")
    one, two = tmp_path / "one.npy", tmp_path / "two.npy"
    mpirun(1, [script, str(one)])
    mpirun(2, [script, str(two)])
    a, b = np.load(one), np.load(two)
    assert a.shape == (4, 3, 16, 3)
    assert np.array_equal(a, b), "chain histories differ between 1 and 2 ranks"


@pytest.mark.parametrize("biquadratic", [False, True])
def test_compiled_linear_chain_equals_the_plain_chain(biquadratic):
    """The linear model's compiled chain makes the same moves as the per-proposal numpy chain."""
    from slmc_hpc.systems.double_exchange.effective.linear import LinearModel

    model = DoubleExchange(lx=6, ly=6, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.05)
    # All shells: some alias onto the site itself; with biquadratic terms, the transformer's proposal model.
    linear = LinearModel(model.lattice, n_J=model.lattice.n_distance_shells, biquadratic=biquadratic)
    linear.set_readout(0.3, np.random.default_rng(1).normal(size=linear.n_readout - 1) * 0.05)
    sampler = slmc_chain(SpinAction(make_evaluator("dense", model)), linear, inner_sweeps=2).update
    assert sampler.mode == "compiled"
    state = init_chains(SpinAction(make_evaluator("dense", model)), seed=3, chains=range(5))
    sites, dirs, uniforms = draw_proposals(state.rngs, model.n_sites, 72)
    plain = state.config.copy()
    plain_acceptance = sampler.inner_chain(plain, linear.energy(plain), sites, dirs, uniforms)
    compiled = state.config.copy()
    delta, moves = linear.metropolis_chain(compiled, sites, dirs, uniforms, model.T)
    assert 0.2 < plain_acceptance.mean() < 0.8
    np.testing.assert_array_equal(moves / 72, plain_acceptance)
    np.testing.assert_allclose(compiled, plain, rtol=0, atol=1e-14)
    np.testing.assert_allclose(delta, linear.energy(compiled) - linear.energy(state.config), rtol=0, atol=1e-11)


def test_nested_inner_chain_samples_exp_minus_heff():
    """The nested chain alone (no outer test) samples exp(-H_eff/T), whatever its proposal model.

    Two sites, H_eff = -a S_1·S_2 and a linear proposal with another coupling: c = S_1·S_2 is uniform
    under the uniform measure, so <c> = coth(a/T) - T/a (the Langevin function).
    """
    from slmc_hpc.systems.double_exchange.effective.linear import LinearModel

    a, T = 0.5, 0.3
    model = DoubleExchange(lx=2, ly=1, hoppings={1: 1.0}, J=1.0, mu=0.0, T=T)
    effective = WrongCouplingModel(a)
    effective.proposal = LinearModel(model.lattice, n_J=1)
    effective.proposal.set_readout(0.0, np.array([-0.1]))  # far from H_eff: many sub-chains are rejected
    sampler = slmc_chain(SpinAction(make_evaluator("dense", model)), effective, inner_sweeps=3, inner_block=2).update
    assert sampler.mode == "nested" and sampler.n_blocks(6) == 3
    state = init_chains(SpinAction(make_evaluator("dense", model)), seed=13, chains=range(128))
    history, block_acceptance = [], []
    for step in range(450):
        sites, dirs, uniforms = draw_proposals(state.rngs, 2, 6)
        block_uniforms = np.stack([rng.random(3) for rng in state.rngs])
        energy = effective.energy(state.config)
        _, blocks = sampler.nested_chain(state.config, energy, sites, dirs, uniforms, block_uniforms)
        np.testing.assert_array_equal(energy, effective.energy(state.config))
        if step >= 50:
            history.append(state.config.copy())
            block_acceptance.append(blocks.mean())
    assert 0.2 < np.mean(block_acceptance) < 0.6, "the sub-chain test should reject visibly (measured: 0.38)"
    x = a / T
    assert_within_three_sigma(chain_means_of_bond(history), 1.0 / np.tanh(x) - 1.0 / x)


def test_tuning_ladders_stop_after_two_low_scores_and_sub_chains_descend_from_the_whole_chain(monkeypatch):
    """The search the tune phase runs, on scripted measurements (the real ones are timed and noisy):
    sweeps ascend as one sub-chain each until two in a row score below the best, one low score does
    not end it, and the sub-chain lengths descend from the whole chain measured on the ladder, the same way."""
    from slmc_hpc.systems.double_exchange.effective.transformer import TransformerModel
    from slmc_hpc.systems.double_exchange.lattice import Lattice
    from slmc_hpc.systems.double_exchange.samplers import tuning

    n = 16
    jumps = {1: 1.0, 2: 2.0, 4: 1.5, 8: 3.0, 16: 2.5, 32: 2.0, 64: 9.0}  # 4 dips once; 16 and 32 below 8
    measured = []

    def scripted(action, effective, state, sweeps, block, steps, comm=None):
        measured.append((sweeps, block))
        gain = 1.2 if block == 2 * n else 1.0  # sub-chains of 2N beat the whole chain
        settings = {"inner_sweeps": sweeps, "inner_block": block}
        trial = tuning.Trial(settings, steps, 0.5, 1.0, np.full(2, jumps[sweeps] * gain))
        return trial, np.random.default_rng(len(measured)).normal(size=(steps + 1, 2, 2))

    monkeypatch.setattr(tuning, "measure_candidate", scripted)
    monkeypatch.setattr(tuning, "CANDIDATE_SWEEPS", tuple(jumps))
    action = SpinAction(make_evaluator("dense", DoubleExchange(4, 4, {1: 1.0}, J=1.0, mu=0.0, T=0.1)))
    model = TransformerModel(Lattice(4, 4), 2, 1, 1)
    sweeps, block, _ = tuning.tune_inner_chain(action, model, None, "auto", "auto")
    assert measured[:6] == [(s, s * n) for s in (1, 2, 4, 8, 16, 32)]  # no 64
    assert measured[6:] == [(8, 2 * n), (8, n), (8, n // 2)]  # from the whole chain down; no N/4
    assert sweeps == 8 and block == 2 * n
