"""The inner-chain tuning: it measures real SLMC steps and honours the acceptance floor (`sampler.min_acceptance`)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from slmc_hpc.effective import make_effective
from slmc_hpc.evaluators import make_evaluator
from slmc_hpc.physics import DoubleExchange
from slmc_hpc.samplers import init_chains
from slmc_hpc.samplers.tuning import CANDIDATE_SWEEPS, tune_inner_chain


@pytest.fixture(scope="module")
def setting():
    model = DoubleExchange(lx=4, ly=4, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.1)
    evaluator = make_evaluator("dense", model)
    effective = make_effective(SimpleNamespace(kind="linear", n_J=2, n_layers=2, n_att=3, load=None), model.lattice)
    effective.set_readout(0.0, np.array([-0.02, 0.0]))  # a crude ferromagnetic guess: acceptance varies with sweeps
    return evaluator, effective


@pytest.mark.parametrize("floor", [0.0, 0.5, 0.99])
def test_the_choice_is_the_best_candidate_above_the_acceptance_floor(setting, floor):
    evaluator, effective = setting
    state = init_chains(evaluator, 11, np.arange(8))
    trials = []
    sweeps, block, measured = tune_inner_chain(
        evaluator, effective, state, "auto", 0, steps=3, report=trials.append, min_acceptance=floor
    )
    assert [t.inner_sweeps for t in trials] == list(CANDIDATE_SWEEPS) and measured == trials and block == 0
    assert all(0.0 <= t.acceptance <= 1.0 and t.seconds_per_step > 0 for t in trials)
    eligible = [t for t in trials if t.acceptance >= floor] or trials
    assert sweeps == max(eligible, key=lambda t: t.score).inner_sweeps
    # The chains moved on: the measured steps were real SLMC steps, exact against the evaluator.
    omega, _ = evaluator.omega(state.spins)
    np.testing.assert_allclose(state.omega, omega, rtol=1e-12)


def test_explicit_values_are_kept(setting):
    evaluator, effective = setting
    state = init_chains(evaluator, 12, np.arange(4))
    assert tune_inner_chain(evaluator, effective, state, 4, 0, steps=2, min_acceptance=0.5)[:2] == (4, 0)
