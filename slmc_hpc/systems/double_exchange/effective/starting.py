"""The effective model a job starts from: untrained, carried over from a smaller run, or loaded frozen.

The one place that turns the `effective` section and a stored model into a model on this job's
lattice, with the same checks for both keys: a stored model must match the job's architecture (the
run refuses and names the key), and a model from another lattice gets its nested proposal refitted
here, from H_eff alone, without a diagonalisation.
"""

from __future__ import annotations

import numpy as np

from slmc_hpc.core.protocols import EffectiveModel, NestedProposal
from slmc_hpc.io.model import read_stored
from slmc_hpc.systems.double_exchange.effective import (
    check_architecture,
    make_effective,
    rebuild,
    stored_lattice,
    transfer,
)
from slmc_hpc.systems.double_exchange.physics import DoubleExchange, random_spins

#: spawn_key tag of the proposal refit on a new lattice (chain streams use spawn_key=(chain,), a 1-tuple).
PROPOSAL_STREAM = 0x5052


def starting_model(effective_config, model: DoubleExchange, seed: int) -> EffectiveModel:
    """The model training starts from: H_eff = 0, or with `effective.init` a stored one carried to this lattice."""
    init = effective_config.init
    if init is None:
        return make_effective(effective_config, model.lattice)
    stored = read_stored(init, "effective.init")
    trained = rebuild(stored, model.lattice)  # its parameters are per shell: any lattice holds them
    check_architecture(trained, effective_config, init, allow_other_n_J=True)
    carried = transfer(trained, model.lattice, effective_config, stored_lattice(stored).n_sites)
    proposal_for_lattice(carried, model.T, seed)
    return carried


def loaded_model(effective_config, model: DoubleExchange, seed: int) -> EffectiveModel:
    """The trained model stored in the run file `effective.load` names, for a frozen run."""
    loaded = rebuild(read_stored(effective_config.load, "effective.load"), model.lattice)
    check_architecture(loaded, effective_config, effective_config.load)
    if isinstance(loaded, NestedProposal) and loaded.proposal is None:  # trained on another lattice: refit
        proposal_for_lattice(loaded, model.T, seed)
    return loaded


def proposal_for_lattice(model, temperature: float, seed: int, configurations: int = 64, sweeps: int = 20) -> None:
    """Refit a transferred model's proposal (nested inner chain) on this lattice without any diagonalisation.

    H_eff itself gives the targets (`fit_proposal`); the configurations come from the compiled
    Metropolis chain under the model's own linear read-out, then once more under the first fit.
    Every rank draws the same configurations from `seed`, so every rank gets the same proposal.
    """
    from slmc_hpc.systems.double_exchange.effective.linear import LinearModel

    if not isinstance(model, NestedProposal):
        return
    lattice = model.lattice
    n = lattice.n_sites
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(PROPOSAL_STREAM, 0))))
    chain = LinearModel(lattice, model.n_J)
    chain.set_readout(0.0, model.parameters()["couplings"])
    spins = np.stack([random_spins(rng, (n,)) for _ in range(configurations)])
    for _ in range(2):
        moves = sweeps * n
        sites = rng.integers(0, n, (configurations, moves))
        dirs = rng.standard_normal((configurations, moves, 3))
        dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
        chain.metropolis_chain(spins, sites, dirs, rng.random((configurations, moves)), temperature)
        model.fit_proposal(spins)
        chain = model.proposal
