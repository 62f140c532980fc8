"""HMC for the double-exchange model (issue 19): exact HMC with eigenvector forces, and self-learning HMC.

The checks every HMC code owes, on the spheres: the exact force equals a finite difference of Ω, the effective
models' forces equal finite differences of H_eff, a trajectory is reversible, <exp(-dH)> = 1, dH ∝ eps^2 with
Omelyan's constant below leapfrog's; and exactness: exact HMC and SLHMC (linear and transformer) agree with the
exact local MC at 4x4 and 6x6 (T = 0.1) within 3 combined error bars on omega, m, ms and nn.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from slmc_hpc.core.chains import chain_streams, initial_state
from slmc_hpc.core.integrators import integrate
from slmc_hpc.core.learning import Trainer, fit_linear
from slmc_hpc.systems.double_exchange.effective import make_effective
from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
from slmc_hpc.systems.double_exchange.hmc import (
    EffectiveSpinForce,
    ExactSpinForce,
    SphereDynamics,
    hmc_chain,
    tangent,
)
from slmc_hpc.systems.double_exchange.physics import DoubleExchange, random_spins
from slmc_hpc.systems.double_exchange.samplers import init_chains
from tests.test_slmc_exactness import assert_agrees, sample

torch.set_num_threads(1)


def spin_action(size: int = 4, T: float = 0.1, **model) -> SpinAction:
    parameters = {"hoppings": {1: 1.0}, "J": 1.0, "mu": 0.0, **model}
    return SpinAction(make_evaluator("dense", DoubleExchange(lx=size, ly=size, T=T, **parameters)))


def test_the_exact_force_is_the_gradient_of_omega_over_t_on_the_spheres():
    action = spin_action(4, T=0.1, hoppings={1: 1.0, 2: 0.3}, J=2.0, mu=0.2)
    rng = np.random.default_rng(1)
    spins = random_spins(rng, (2, 16))
    force = ExactSpinForce(action)(spins)
    np.testing.assert_allclose(np.sum(force * spins, axis=-1), 0.0, atol=1e-12)  # tangent
    for b, i in [(0, 3), (1, 11)]:
        for axis in tangent(rng.standard_normal((2, 3)), spins[b, i][None]):  # two tangent directions
            axis /= np.linalg.norm(axis)
            h, moved = 1e-5, []
            for sign in (1, -1):  # along the great circle through S_i in the direction `axis`
                trial = spins[b].copy()
                trial[i] = spins[b, i] * np.cos(h) + sign * axis * np.sin(h)
                moved.append(action.evaluate(trial[None]).action[0])
            finite_difference = (moved[0] - moved[1]) / (2 * h)
            assert finite_difference == pytest.approx(force[b, i] @ axis, rel=1e-7, abs=1e-9)


def effective_models(lattice, seed: int = 2):
    rng = np.random.default_rng(seed)
    linear = make_effective(SimpleNamespace(kind="linear", n_J=3), lattice)
    linear.set_readout(0.3, rng.normal(size=linear.n_readout - 1) * 0.1)
    transformer = make_effective(SimpleNamespace(kind="transformer", n_J=3, n_layers=2, n_att=2), lattice)
    parameters = transformer.parameters()
    parameters["attention"] = rng.normal(scale=0.3, size=parameters["attention"].shape)
    parameters["couplings"], parameters["biquadratic"] = rng.normal(size=3) * 0.1, rng.normal(size=3) * 0.1
    transformer.set_parameters(parameters)
    return linear, transformer


@pytest.mark.parametrize("kind", ["linear", "transformer"])
def test_effective_forces_are_gradients_and_do_not_depend_on_the_batch(kind):
    action = spin_action(4)
    model = dict(zip(("linear", "transformer"), effective_models(action.model.lattice), strict=True))[kind]
    spins = random_spins(np.random.default_rng(3), (3, 16))
    energy, gradient = model.force(spins)
    np.testing.assert_array_equal(energy, model.energy(spins))
    h = 1e-6
    for b, i, a in [(0, 3, 0), (1, 7, 1), (2, 11, 2)]:
        plus, minus = spins.copy(), spins.copy()
        plus[b, i, a] += h
        minus[b, i, a] -= h
        finite_difference = (model.energy(plus)[b] - model.energy(minus)[b]) / (2 * h)
        assert finite_difference == pytest.approx(gradient[b, i, a], rel=1e-7, abs=1e-9)
    alone = model.force(spins[1:2])
    assert np.array_equal(alone[1][0], gradient[1]) and np.array_equal(alone[0][0], energy[1])


def trajectory(action, force, integrator, n, eps, spins, momenta):
    dynamics = SphereDynamics()
    field, p = dynamics.field(spins), momenta.copy()

    def kick(t):
        nonlocal p
        p = dynamics.kick(p, force(field), t)

    def drift(t):
        nonlocal field, p
        field, p = dynamics.drift(field, p, t)

    integrate(integrator, n, eps, kick, drift)
    return field, p


@pytest.mark.parametrize("integrator", ["leapfrog", "omelyan"])
def test_a_trajectory_on_the_spheres_is_reversible(integrator):
    action = spin_action(4)
    state = init_chains(action, seed=4, chains=range(3))
    momenta = SphereDynamics().draw_momenta(state.rngs, state.config)
    force = ExactSpinForce(action)
    end, p = trajectory(action, force, integrator, 10, 0.1, state.config, momenta)
    assert np.abs(end - state.config).max() > 0.1
    np.testing.assert_allclose(np.linalg.norm(end, axis=-1), 1.0, atol=1e-14)
    back, q = trajectory(action, force, integrator, 10, 0.1, end, -p)
    assert np.abs(back - state.config).max() < 1e-12 and np.abs(q + momenta).max() < 1e-11


def test_exact_hmc_diagonalises_once_per_new_force_and_the_test_and_next_start_reuse_it():
    """With the exact HMC's evaluator (`forces`), a trajectory of n Omelyan steps costs 2n diagonalisations per
    chain, not 2n + 1 forces and a test; the chain equals one whose test diagonalises again (eigvalsh)."""
    model = DoubleExchange(lx=4, ly=4, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.1)
    runs = {}
    for forces in (True, False):
        action = SpinAction(make_evaluator("dense", model, forces=forces))
        chain = hmc_chain(action, ExactSpinForce(action), "omelyan", 3, 3.0)
        state = init_chains(action, seed=6, chains=range(3))
        counts, accepted = [], []
        for _ in range(6):
            before = action.evaluator.eigh_count
            accepted.append(chain.step(state).accepted)
            counts.append(action.evaluator.eigh_count - before)
        runs[forces] = state.config.copy(), state.action.copy(), np.array(accepted)
        if forces:
            assert counts == [3 * 2 * 3] * 6, counts  # 3 chains x 2n; the first force and the test are kept
            assert 0 < runs[forces][2].mean() < 1  # trajectories both accepted and rejected
    np.testing.assert_array_equal(runs[True][2], runs[False][2])
    np.testing.assert_array_equal(runs[True][0], runs[False][0])
    np.testing.assert_allclose(runs[True][1], runs[False][1], rtol=1e-12)


def test_dh_scales_as_eps_squared_and_omelyan_beats_leapfrog():
    action = spin_action(4)
    state = init_chains(action, seed=5, chains=range(4))
    dynamics, force = SphereDynamics(), ExactSpinForce(action)
    momenta = dynamics.draw_momenta(state.rngs, state.config)

    def energy(spins, p):
        return action.evaluate(spins).action + dynamics.kinetic(p)

    start = energy(state.config, momenta)
    constants = {}
    for integrator in ("leapfrog", "omelyan"):
        violations = []
        for n in (8, 16, 32):
            end, p = trajectory(action, force, integrator, n, 0.5 / n, state.config, momenta)
            violations.append(np.mean(np.abs(energy(end, p) - start)))
        slope = np.polyfit(np.log([0.5 / n for n in (8, 16, 32)]), np.log(violations), 1)[0]
        assert slope == pytest.approx(2.0, abs=0.25), (integrator, violations)
        constants[integrator] = violations[-1]
    assert constants["omelyan"] < 0.3 * constants["leapfrog"], constants


def test_exp_minus_dh_averages_to_one():
    """In equilibrium, with a step size that makes dH visible (acceptance about 0.7)."""
    action = spin_action(4)
    state = init_chains(action, seed=6, chains=range(32))
    chain = hmc_chain(action, ExactSpinForce(action), "leapfrog", 2, 1.6)
    for _ in range(30):
        chain.step(state)
    infos = [chain.step(state) for _ in range(40)]
    dh = np.array([info.samples["dH"] for info in infos])
    per_chain = np.exp(-dh).mean(axis=0)
    mean, error = per_chain.mean(), per_chain.std(ddof=1) / np.sqrt(per_chain.size)
    acceptance = np.mean([info.accepted for info in infos])
    print(f"<exp(-dH)> = {mean:.4f} ± {error:.4f}, <dH> = {dh.mean():.3f}, acceptance {acceptance:.2f}")
    assert 0.5 < acceptance < 0.95 and dh.mean() > 0.05
    assert abs(mean - 1.0) < 3 * error and error < 0.03


def trained(kind: str, reference, steps: int = 60):
    """An effective model fitted to the exact local MC's configurations (trained briefly, for the transformer)."""
    lattice, n_sites = reference.model.lattice, reference.model.n_sites
    spins = np.concatenate([c[0] for c in reference.configs[::3]])
    omega = np.concatenate([c[1] for c in reference.configs[::3]])
    architecture = SimpleNamespace(kind=kind, n_J=3, n_layers=1, n_att=2)
    model = make_effective(architecture, lattice)
    fit_linear(model, spins, omega, scale=n_sites)
    if kind == "transformer":
        Trainer(model, SimpleNamespace(batch_size=64, lr=1e-3, weight_decay=0.0), n_sites, seed=1).train(
            spins, omega, steps
        )
        fit_linear(model, spins, omega, scale=n_sites)
    return model


@pytest.mark.parametrize("size", [4, 6])
@pytest.mark.parametrize("sampler", ["hmc", "slhmc-linear", "slhmc-transformer"])
def test_hmc_and_slhmc_agree_with_the_exact_local_mc(exact_local_mc, size, sampler):
    reference = exact_local_mc[size]
    action = reference.action
    if sampler == "hmc":  # the production evaluator of exact HMC: Ω from the forces' eigh, diagonalisations kept
        action = SpinAction(make_evaluator("dense", action.model, forces=True))
        force = ExactSpinForce(action)
    else:
        force = EffectiveSpinForce(trained(sampler.split("-")[1], reference), action.model.T)
    chain = hmc_chain(action, force, "omelyan", 3, 1.5)
    rngs = chain_streams(900 + size, range(16))
    state = initial_state(action, np.stack([random_spins(r, (action.model.n_sites,)) for r in rngs]), rngs, range(16))
    means, _, acceptance = sample(chain.step, action, state, steps=150, thermalization=30)
    print(f"{sampler} {size}x{size}: acceptance {acceptance:.2f}")
    assert acceptance > 0.2
    assert_agrees(reference.means, means)
