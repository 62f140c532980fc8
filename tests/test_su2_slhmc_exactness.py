"""Frozen self-learning HMC of the gauge theory samples exact HMC's distribution, whatever its effective action.

Each kind (loops, stout, one-layer CASK; Nf = 4, and Nf = 2 with the dense log det; stout with cg, whose MD runs on
the pseudofermion form and whose test on the true pseudofermion action) agrees with exact HMC on plaquette, polyakov
and pbp within 3 combined standard errors. Small lattice, fixed seeds; errors are standard errors of independent
chains' means. (A file of its own, so that `make test`'s two workers share the suite's longest statistics.)
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from slmc_hpc.core.chains import chain_streams, initial_state
from slmc_hpc.core.learning import fit_readout
from slmc_hpc.systems.su2_staggered.effective import pseudofermion_rows
from tests.test_su2_hmc import chain_means, chains, run, simulation
from tests.test_su2_slhmc import SHAPE, effective_action

torch.set_num_threads(1)


#: Exactness runs: chains, exact thermalisation, then per method skipped and measured trajectories (leapfrog, 5 steps).
CHAINS, WARM, SKIP, MEASURED, STEPS = 12, 200, 5, 45, 5
OBSERVED = ("plaquette", "polyakov", "pbp")


def sample(sim, state, effective=None) -> tuple[dict, float]:
    """Per-chain-means statistics of the observables after SKIP trajectories, and the acceptance."""
    stepper = sim.hmc(STEPS, effective)
    run(stepper, state, SKIP)
    series, accepted = {name: [] for name in OBSERVED}, []
    for _ in range(MEASURED):
        accepted.append(stepper.step(state).accepted)
        for name, values in sim.measure(state).items():
            series[name].append(values)
    return {name: chain_means(values) for name, values in series.items()}, float(np.mean(accepted))


@pytest.fixture(scope="module")
def exact_reference():
    """Per n_flavors: the simulation, thermalised links (exact HMC from a rough start) and exact HMC's results."""
    cache = {}

    def get(n_flavors: int):
        if n_flavors not in cache:
            sim = simulation(SHAPE, n_flavors=n_flavors, integrator="leapfrog")
            warm = chains(sim, CHAINS, seed=21)
            run(sim.hmc(STEPS), warm, WARM)
            state = initial_state(sim.action, warm.config.copy(), chain_streams(22, range(CHAINS)), range(CHAINS))
            cache[n_flavors] = (sim, warm, sample(sim, state))
        return cache[n_flavors]

    return get


EXACTNESS_CASES = [
    ("loops", 4, "dense"),
    ("stout", 4, "dense"),
    ("cask", 4, "dense"),
    ("stout", 2, "dense"),
    ("stout", 4, "cg"),
]


@pytest.mark.parametrize("kind, n_flavors, evaluator", EXACTNESS_CASES)
def test_frozen_slhmc_agrees_with_exact_hmc(kind, n_flavors, evaluator, exact_reference):
    """plaquette, polyakov and pbp of frozen SLHMC against exact HMC (dense) within 3 combined standard errors, both
    from the same thermalised links with their own random numbers; with cg the SLHMC's MD runs on the pseudofermion
    form of S_eff (with its hopping terms) and its test on the true pseudofermion action. The read-out is fitted by
    least squares to exact HMC configurations (with cg: each with its trajectory's phi), the rhos are drawn
    (exactness holds for any frozen S_eff)."""
    sim, warm, (reference, exact_acceptance) = exact_reference(n_flavors)
    pseudofermions = evaluator == "cg"
    layers = 1 if kind == "cask" else 2
    model = effective_action(kind, sim.lattice, n_layers=layers, n_flavors=n_flavors, pseudofermions=pseudofermions)
    sampler = sim if evaluator == "dense" else simulation(SHAPE, evaluator=evaluator, integrator="leapfrog")
    if pseudofermions:  # (links, phi) rows of exact trajectories, both ends under the trajectory's phi, as cg trains
        fit_state = initial_state(sampler.action, warm.config.copy(), chain_streams(24, range(CHAINS)), range(CHAINS))
        stepper, rows, targets = sampler.hmc(STEPS), [], []
        for _ in range(4):
            info = stepper.step(fit_state)
            rows.append(pseudofermion_rows(info.proposed, torch.cat([sampler.action.phi] * 2)))
            targets.append(info.proposed_target)
        configs, targets = np.concatenate(rows), np.concatenate(targets)
    else:
        infos = run(sim.hmc(STEPS), copy.deepcopy(warm), 4)
        configs = np.concatenate([info.proposed for info in infos])
        targets = np.concatenate([info.proposed_target for info in infos])
    fit_readout(model, model.features(configs), targets)
    state = initial_state(sampler.action, warm.config.copy(), chain_streams(23, range(CHAINS)), range(CHAINS))
    results, acceptance = sample(sampler, state, model)
    print(f"{kind} Nf = {n_flavors} {evaluator}: acceptance hmc {exact_acceptance:.2f}, slhmc {acceptance:.2f}")
    assert acceptance > 0.1, (
        "a fitted model should be accepted often (loops 0.78 here with every class, the networks 0.75)"
    )
    for name in OBSERVED:
        (a, ea), (b, eb) = reference[name], results[name]
        print(f"  {name}: hmc {a:.4f} ± {ea:.4f}, slhmc {b:.4f} ± {eb:.4f}, z = {(a - b) / np.hypot(ea, eb):+.2f}")
        assert abs(a - b) < 3 * np.hypot(ea, eb), name
