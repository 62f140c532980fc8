"""Updates of the double-exchange model: exact local MC (the baseline) and SLMC, batched over a rank's chains.

>>> action = SpinAction(make_evaluator("dense", model))
>>> state = init_chains(action, seed=1, chains=range(8))
>>> ExactLocalSweep(action).step(state); slmc_chain(action, effective, inner_sweeps=4).step(state)
"""

from __future__ import annotations

import numpy as np

from slmc_hpc.core.chains import ChainState, chain_streams, initial_state
from slmc_hpc.systems.double_exchange.physics import random_spins
from slmc_hpc.systems.double_exchange.samplers.exact import ExactLocalSweep, draw_proposals
from slmc_hpc.systems.double_exchange.samplers.slmc import SLMCUpdate, inner_mode, slmc_chain


def init_chains(action, seed: int, chains) -> ChainState:
    """Random initial spins for the given global chains, each drawn first from its own stream, evaluated."""
    rngs = chain_streams(seed, chains)
    spins = np.stack([random_spins(rng, (action.model.n_sites,)) for rng in rngs])
    return initial_state(action, spins, rngs, chains)


def measure(action, state: ChainState) -> dict[str, np.ndarray]:
    """Observables of the current configurations, from the cached eigenvalues."""
    return action.model.observables(state.config, state.rows["eigenvalues"])


__all__ = ["ExactLocalSweep", "SLMCUpdate", "draw_proposals", "init_chains", "inner_mode", "measure", "slmc_chain"]
