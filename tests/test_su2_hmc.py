"""Exact HMC of the gauge theory through the system's own classes (`GaugeSimulation`, `core.hmc`, the outer test).

The checks every HMC code owes, for both evaluators: reversibility of a trajectory with pseudofermions held
fixed, <exp(-dH)> = 1 within errors on real chains, and physics against results known without Monte Carlo
(pure gauge at beta = 0.5: <plaquette> = I_2(beta)/I_1(beta)); dense and cg agree on plaquette, polyakov and
pbp at the seeds' couplings; a trajectory of a chain does not depend on the other chains of its batch.
Small lattices and fixed seeds; errors are standard errors of independent chains' means.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import iv

from slmc_hpc.config import config_from_dict
from slmc_hpc.core.chains import chain_streams, initial_state
from slmc_hpc.core.integrators import integrate
from slmc_hpc.systems.su2_staggered.simulation import GaugeSimulation

torch.set_num_threads(1)


def simulation(shape, evaluator="dense", n_flavors=4, beta=2.7, mass=0.3, **sampler) -> GaugeSimulation:
    config = config_from_dict(
        {
            "model": {"kind": "su2_staggered", "shape": list(shape), "beta": beta, "mass": mass}
            | {"n_flavors": n_flavors},
            "evaluator": {"kind": evaluator, "options": {"tol": 1e-12} if evaluator == "cg" else {}},
            "sampler": {"kind": "hmc", **sampler},
        }
    )
    return GaugeSimulation(config)


def chains(sim: GaugeSimulation, n: int, seed: int = 1, hot: bool = True):
    rngs = chain_streams(seed, range(n))
    configs = sim.initial_configurations(rngs)
    if hot:  # a disordered start, as after thermalisation at beta ~ 2-3 (not Haar: far too rough for MD)
        from slmc_hpc.systems.su2_staggered.links import draw_momenta, exp_algebra, mm

        configs = mm(exp_algebra(draw_momenta(rngs, sim.lattice.volume), 0.6), torch.from_numpy(configs)).numpy()
    return initial_state(sim.action, configs, rngs, range(n))


def run(stepper, state, steps: int) -> list:
    return [stepper.step(state) for _ in range(steps)]


def chain_means(values: list[np.ndarray]) -> tuple[float, float]:
    per_chain = np.mean(values, axis=0)
    return float(per_chain.mean()), float(per_chain.std(ddof=1) / np.sqrt(per_chain.size))


def forward_and_back(sim: GaugeSimulation, state, force, integrator: str, n_steps: int, eps: float):
    """A trajectory under `force`, the momenta flipped, the same trajectory again: (largest link change on the way
    out, largest link error on return, largest momentum error on return)."""
    dynamics = sim.dynamics
    start = dynamics.field(state.config)
    field = start.clone()
    momenta = dynamics.draw_momenta(state.rngs, field)
    initial = momenta.clone()

    def kick(eps):
        nonlocal momenta
        momenta = dynamics.kick(momenta, force(field), eps)

    def drift(eps):
        nonlocal field, momenta
        field, momenta = dynamics.drift(field, momenta, eps)

    integrate(integrator, n_steps, eps, kick, drift)
    moved = float((field - start).abs().max())
    momenta = -momenta
    integrate(integrator, n_steps, eps, kick, drift)
    return moved, float((field - start).abs().max()), float((momenta + initial).abs().max())


def test_pseudofermion_trajectory_is_reversible():
    """Forward, flip the momenta, back: with phi held fixed the links return to ~1e-12 and the momenta too."""
    sim = simulation((4, 4, 2, 2), evaluator="cg")
    state = chains(sim, 2)
    sim.action.refresh(state)
    for integrator in ("leapfrog", "omelyan"):
        moved, links_error, momenta_error = forward_and_back(sim, state, sim.action.force, integrator, 8, 0.1)
        assert moved > 0.1  # it moved
        assert links_error < 1e-11, integrator
        assert momenta_error < 1e-10, integrator


@pytest.mark.parametrize("evaluator", ["dense", "cg"])
def test_exp_minus_dh_averages_to_one(evaluator):
    """<exp(-dH)> = 1 in equilibrium for any step size (here leapfrog with acceptance about 0.8): the identity
    exact HMC rests on (measured: 1.003(7) dense, 1.001(7) cg with 48 chains)."""
    sim = simulation((4, 2, 2, 2), evaluator=evaluator, integrator="leapfrog")
    state = chains(sim, 24, seed=3)
    stepper = sim.hmc(6)
    run(stepper, state, 10)
    infos = run(stepper, state, 30)
    dh = np.array([info.samples["dH"] for info in infos])
    mean, error = chain_means(np.exp(-dh))
    acceptance = np.mean([info.accepted for info in infos])
    print(f"{evaluator}: <exp(-dH)> = {mean:.4f} ± {error:.4f}, <dH> = {dh.mean():.3f}, acceptance {acceptance:.2f}")
    assert 0.6 < acceptance < 0.95 and dh.mean() > 0.03, "the step size should make dH visible"
    assert abs(mean - 1.0) < 3 * error and error < 0.02


@pytest.mark.parametrize("evaluator", ["dense", "cg"])
def test_pure_gauge_plaquette_at_small_beta_is_the_strong_coupling_value(evaluator):
    """Nf = 0, beta = 0.5: <plaquette> = I_2(beta)/I_1(beta) = 0.1237 (corrections O(beta^5) ~ 3e-5)."""
    beta = 0.5
    sim = simulation((4, 4, 2, 2), evaluator=evaluator, n_flavors=0, beta=beta)
    state = chains(sim, 16, seed=5)
    stepper = sim.hmc(4)
    run(stepper, state, 10)
    plaquettes = []
    for _ in range(50):
        stepper.step(state)
        plaquettes.append(sim.measure(state)["plaquette"])
    mean, error = chain_means(plaquettes)
    exact = iv(2, beta) / iv(1, beta)
    print(f"{evaluator}: plaquette {mean:.5f} ± {error:.5f}, strong coupling {exact:.5f}")
    assert abs(mean - exact) < 3 * error and error < 2e-3
    assert np.all(np.array(sim.measure(state)["pbp"]) == 0.0)  # (Nf/4) Re Tr D^-1 / V with Nf = 0


def test_a_trajectory_does_not_depend_on_the_other_chains_of_its_batch():
    """Bit for bit: chain histories do not depend on how chains are grouped (ranks, batches)."""
    sims = [simulation((4, 2, 2, 2), evaluator="cg") for _ in range(3)]  # each batch its own pseudofermions
    whole = chains(sims[0], 3, seed=7)
    parts = [chains(sim, 3, seed=7) for sim in sims[1:]]
    for part, keep in zip(parts, (slice(0, 1), slice(1, 3)), strict=True):
        part.config, part.action = part.config[keep].copy(), part.action[keep].copy()
        part.rows = {name: values[keep].copy() for name, values in part.rows.items()}
        part.rngs, part.chains = part.rngs[keep], part.chains[keep]
    for _ in range(2):
        infos = [sim.hmc(4).step(state) for sim, state in zip(sims, [whole, *parts], strict=True)]
    assert np.array_equal(whole.config, np.concatenate([p.config for p in parts]))
    for name in ("dH", "cg_iterations"):
        assert np.array_equal(infos[0].samples[name], np.concatenate([i.samples[name] for i in infos[1:]])), name
    pbp = [sim.measure(state)["pbp"] for sim, state in zip(sims, [whole, *parts], strict=True)]
    assert np.array_equal(pbp[0], np.concatenate(pbp[1:]))


@pytest.mark.parametrize("integrator, forces_per_step", [("leapfrog", 1), ("omelyan", 2)])
def test_dense_hmc_factorises_each_new_configuration_once(integrator, forces_per_step):
    """The dense evaluator keeps its Cholesky factors: a trajectory of n steps costs one factorisation per new
    force and chain (its first force, its test and the measurement after it take kept ones), and the pbp from a
    kept factor is the one computed afresh."""
    from slmc_hpc.systems.su2_staggered import staggered

    sim = simulation((2, 2, 2, 2), integrator=integrator)
    state = chains(sim, 3, seed=2)
    stepper = sim.hmc(4)
    for _ in range(3):
        before = sim.action.factorisations
        stepper.step(state)
        pbp = sim.measure(state)["pbp"]
        assert sim.action.factorisations - before == 3 * 4 * forces_per_step
    fresh = staggered.pbp_dense(torch.from_numpy(state.config), sim.lattice, sim.action.mass, 4).numpy()
    np.testing.assert_allclose(pbp, fresh, rtol=1e-13)


def test_dense_and_cg_agree_at_the_seeds_couplings():
    """beta = 2.7, m = 0.3, Nf = 4 on 4x4x2x2 (4^4 is the bench's): plaquette, polyakov and pbp within 3 sigma."""
    results = {}
    for evaluator in ("dense", "cg"):
        sim = simulation((4, 4, 2, 2), evaluator=evaluator)
        state = chains(sim, 12, seed=11 if evaluator == "dense" else 12)
        stepper = sim.hmc(6)
        run(stepper, state, 15)
        series = {name: [] for name in ("plaquette", "polyakov", "pbp")}
        for _ in range(30):
            stepper.step(state)
            for name, values in sim.measure(state).items():
                series[name].append(values)
        results[evaluator] = {name: chain_means(values) for name, values in series.items()}
    for name in ("plaquette", "polyakov", "pbp"):
        (a, ea), (b, eb) = results["dense"][name], results["cg"][name]
        print(f"{name}: dense {a:.4f} ± {ea:.4f}, cg {b:.4f} ± {eb:.4f}, z = {(a - b) / np.hypot(ea, eb):+.2f}")
        assert abs(a - b) < 3 * np.hypot(ea, eb), name
