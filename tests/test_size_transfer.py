"""Size transfer (issue 9): a model trained on one lattice runs exactly on another.

A transformer is bootstrapped on 4x4 (no exact sweeps: H_eff = 0 first, then linear rounds, then
gradient rounds) and carried to 6x6 with `effective.transfer` (per-shell parameters as they are,
the proposal refitted without a diagonalisation); and the reverse, 6x6 -> 4x4. SLMC with the
transferred, frozen model agrees with the exact local MC of the target lattice within 3 combined
error bars on omega, m, ms and nn (the standard errors of independent chains' means).

T = 0.1 (t = 1, J = 1, μ = 0) keeps the exact local MC of 6x6 short: τ_int(ms) is a few sweeps.
"""

from types import SimpleNamespace

import numpy as np
import pytest

from slmc_hpc.core.learning import SelfLearning
from slmc_hpc.systems.double_exchange.effective import make_effective, transfer
from slmc_hpc.systems.double_exchange.effective.starting import proposal_for_lattice
from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
from slmc_hpc.systems.double_exchange.physics import DoubleExchange
from slmc_hpc.systems.double_exchange.samplers import init_chains, slmc_chain
from slmc_hpc.systems.double_exchange.simulation import learning_plan
from tests.test_slmc_exactness import assert_agrees, sample

T = 0.1
ARCHITECTURE = SimpleNamespace(kind="transformer", n_J="auto", n_layers=1, n_att=2, load=None, init=None)
TRAINING = SimpleNamespace(
    rounds=3,
    linear_rounds=2,
    outer_steps_per_round=15,
    steps_per_round=60,
    batch_size=64,
    lr=3e-3,
    weight_decay=1e-4,
    max_samples=5000,
    validation_fraction=0.2,
    validate_every=10,
    patience=3,
)


def physics(size: int):
    model = DoubleExchange(lx=size, ly=size, hoppings={1: 1.0}, J=1.0, mu=0.0, T=T)
    return model, SpinAction(make_evaluator("dense", model))


def bootstrapped(size: int):
    """A transformer trained on `size` x `size` from nothing, with 8 chains, as a run's train phase does."""
    model, evaluator = physics(size)
    effective = make_effective(ARCHITECTURE, model.lattice)
    learner = SelfLearning(effective, learning_plan(evaluator, "auto", "auto"), TRAINING, seed=9)
    state = init_chains(evaluator, seed=900 + size, chains=range(8))
    learner.fit_initial()
    results = [learner.run_round(state) for _ in range(TRAINING.rounds)]
    return effective, results, learner


@pytest.mark.parametrize("source, target", [(4, 6), (6, 4)])
def test_transferred_model_is_exact_on_another_lattice(exact_local_mc, source, target):
    trained, results, learner = bootstrapped(source)
    # Bootstrap: the first round samples random configurations; the fitted rounds are accepted often.
    assert results[-1].acceptance > 0.2, [r.acceptance for r in results]
    assert np.isfinite(results[-1].validation_loss) and len(learner.validation) > 0
    model, evaluator = physics(target)
    moved = transfer(trained, model.lattice, ARCHITECTURE, trained.lattice.n_sites)
    assert moved.n_J == model.lattice.n_distance_shells
    np.testing.assert_array_equal(moved.parameters()["attention"], trained.parameters()["attention"])
    moved.proposal = None
    proposal_for_lattice(moved, T, seed=3)
    assert moved.proposal is not None and moved.proposal.n_J == model.lattice.n_distance_shells
    sampler = slmc_chain(evaluator, moved, inner_sweeps=2, inner_block=model.n_sites // 2)
    assert sampler.update.mode == "nested"
    state = init_chains(evaluator, seed=700 + target, chains=range(16))
    means, _, acceptance = sample(sampler.step, evaluator, state, steps=250, thermalization=40)
    print(f"{source}x{source} -> {target}x{target}: outer acceptance {acceptance:.2f}")
    assert acceptance > 0.1, f"a transferred model should still be accepted, got {acceptance}"
    assert_agrees(exact_local_mc[target].means, means)
