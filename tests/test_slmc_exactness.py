"""SLMC is exact whatever H_eff (issue 4): on 4x4 (t=1, J=1, μ=0, T=0.05), SLMC with a deliberately
poor linear model and SLMC with a trained transformer agree with the exact local MC on omega, m, ms
and nn within 3 combined error bars.

Chains are independent, so each error bar is the standard error of the per-chain means (each chain
runs many autocorrelation times after thermalisation; τ_int(ms) ≈ 5-15 sweeps here).
"""

from types import SimpleNamespace

import numpy as np
import pytest

from slmc_hpc.core.learning import Trainer, fit_linear
from slmc_hpc.systems.double_exchange.effective.linear import LinearModel
from slmc_hpc.systems.double_exchange.effective.transformer import TransformerModel
from slmc_hpc.systems.double_exchange.evaluators import SpinAction, make_evaluator
from slmc_hpc.systems.double_exchange.physics import DoubleExchange
from slmc_hpc.systems.double_exchange.samplers import ExactLocalSweep, init_chains, measure, slmc_chain

OBSERVABLES = ("omega", "m", "ms", "nn")
CHAINS, THERMALIZATION = 32, 60


def sample(step, action, state, steps: int, thermalization: int = THERMALIZATION):
    """Run `steps` steps after thermalisation; return per-chain means, visited configs and acceptance."""
    configs, acceptance = [], []
    for _ in range(thermalization):
        step(state)
    series = {name: [] for name in OBSERVABLES}
    for _ in range(steps):
        acceptance.append(step(state).accepted.mean())
        values = measure(action, state)
        for name in OBSERVABLES:
            series[name].append(values[name])
        configs.append((state.config.copy(), state.rows["omega"].copy()))
    return {name: np.mean(series[name], axis=0) for name in OBSERVABLES}, configs, float(np.mean(acceptance))


def mean_and_error(chain_means: np.ndarray) -> tuple[float, float]:
    return chain_means.mean(), chain_means.std(ddof=1) / np.sqrt(len(chain_means))


@pytest.fixture(scope="module")
def reference():
    model = DoubleExchange(lx=4, ly=4, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.05)
    action = SpinAction(make_evaluator("dense", model))
    sampler = ExactLocalSweep(action)
    state = init_chains(action, seed=101, chains=range(CHAINS))
    means, configs, _ = sample(sampler.step, action, state, steps=300)
    return SimpleNamespace(model=model, action=action, means=means, configs=configs)


def assert_agrees(reference_means, slmc_means) -> None:
    for name in OBSERVABLES:
        (a, ea), (b, eb) = mean_and_error(reference_means[name]), mean_and_error(slmc_means[name])
        combined = np.hypot(ea, eb)
        print(f"{name}: z = {(a - b) / combined:+.2f}")
        assert abs(a - b) < 3 * combined, f"{name}: exact {a:.5f} ± {ea:.5f} vs SLMC {b:.5f} ± {eb:.5f}"


def test_slmc_with_wrong_linear_couplings_is_exact(reference):
    poor = LinearModel(reference.model.lattice, n_J=2)
    # A least-squares fit gives E_0 ≈ -26.6, J_1 ≈ -0.013, J_2 ≈ +0.019 here (outer acceptance 0.27):
    # below, J_1 is twice too strong and J_2 is missing. (With both signs wrong, acceptance drops to 0.03
    # and thermalisation alone takes thousands of steps: exact still, but too slow for a test.)
    poor.set_readout(-20.0, np.array([-0.025, 0.0]))
    sampler = slmc_chain(reference.action, poor, inner_sweeps=1)
    state = init_chains(reference.action, seed=202, chains=range(CHAINS))
    means, _, acceptance = sample(sampler.step, reference.action, state, steps=1500, thermalization=300)
    assert 0.05 < acceptance < 0.22, f"the poor model should be visibly poor, acceptance {acceptance}"
    assert_agrees(reference.means, means)


def trained_transformer(reference, n_layers: int, n_att: int, seed: int, steps: int):
    """A transformer (n_J = 3) fitted and trained on every 5th exact-MC configuration: (model, spins, losses)."""
    transformer = TransformerModel(reference.model.lattice, n_J=3, n_layers=n_layers, n_att=n_att)
    spins = np.concatenate([c[0] for c in reference.configs[::5]])
    omega = np.concatenate([c[1] for c in reference.configs[::5]])
    fit_linear(transformer, spins, omega, scale=reference.model.n_sites)
    config = SimpleNamespace(batch_size=64, lr=1e-3, weight_decay=1e-4)
    losses = Trainer(transformer, config, scale=reference.model.n_sites, seed=seed).train(spins, omega, steps=steps)
    return transformer, spins, losses


def test_slmc_with_trained_transformer_is_exact(reference):
    transformer, _, losses = trained_transformer(reference, n_layers=2, n_att=3, seed=3, steps=150)
    assert np.isfinite(losses).all()
    sampler = slmc_chain(reference.action, transformer, inner_sweeps=1)
    state = init_chains(reference.action, seed=303, chains=range(CHAINS))
    means, _, acceptance = sample(sampler.step, reference.action, state, steps=400)
    assert acceptance > 0.3, f"trained model should be accepted often, got {acceptance}"
    assert_agrees(reference.means, means)


def test_slmc_with_nested_inner_chain_is_exact(reference):
    """Transformer SLMC whose inner chain runs sub-chains under a deliberately poor proposal model."""
    transformer, spins, _ = trained_transformer(reference, n_layers=1, n_att=2, seed=4, steps=100)
    transformer.fit_proposal(spins)
    poor = transformer.proposal.parameters()
    transformer.proposal.set_parameters({"e0": poor["e0"], "couplings": 1.5 * poor["couplings"]})
    sampler = slmc_chain(reference.action, transformer, inner_sweeps=2, inner_block=8)
    assert sampler.update.mode == "nested"
    state = init_chains(reference.action, seed=404, chains=range(CHAINS))
    blocks = []

    def step(state):
        info = sampler.step(state)
        blocks.append(info.extras["block_acceptance"].mean())
        return info

    means, _, acceptance = sample(step, reference.action, state, steps=400)
    # Measured: 0.75 of the sub-chains and 0.30 of the outer steps are accepted.
    assert 0.4 < np.mean(blocks) < 0.95, f"the sub-chain test should be exercised, got {np.mean(blocks)}"
    assert acceptance > 0.15, f"trained model should be accepted often, got {acceptance}"
    assert_agrees(reference.means, means)
