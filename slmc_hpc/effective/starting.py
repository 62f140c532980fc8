"""The effective model a job starts from: untrained, carried over from a smaller run, or loaded frozen.

Kept apart from the driver because it is the one place that turns the `effective` section and a
stored model into a model on this job's lattice, with the same checks for both keys: a stored model
must match the job's architecture (the run refuses and names the key), and a model from another
lattice gets its nested proposal refitted here, from H_eff alone, without a diagonalisation.
"""

from __future__ import annotations

from slmc_hpc.effective import EffectiveModel, check_architecture, make_effective, transfer
from slmc_hpc.physics import DoubleExchange


def starting_model(effective_config, model: DoubleExchange, seed: int) -> EffectiveModel:
    """The model training starts from: H_eff = 0, or with `effective.init` a stored one carried to this lattice."""
    from slmc_hpc.effective.training import proposal_for_lattice

    init = effective_config.init
    if init is None:
        return make_effective(effective_config, model.lattice)
    stored, stored_lattice = _read_stored(effective_config, "init", model)
    check_architecture(stored, effective_config, init, allow_other_n_J=True)
    carried = transfer(stored, model.lattice, effective_config, stored_lattice.n_sites)
    proposal_for_lattice(carried, model.T, seed)
    return carried


def loaded_model(effective_config, model: DoubleExchange, seed: int) -> EffectiveModel:
    """The trained model stored in the run file `effective.load` names, for a frozen run."""
    from slmc_hpc.effective.training import proposal_for_lattice

    loaded, _ = _read_stored(effective_config, "load", model)
    check_architecture(loaded, effective_config, effective_config.load)
    if getattr(loaded, "proposal", False) is None:  # trained on another lattice: refit, no diagonalisation
        proposal_for_lattice(loaded, model.T, seed)
    return loaded


def _read_stored(effective_config, key: str, model: DoubleExchange):
    """(model rebuilt on this lattice, the lattice it was trained on) from the file `effective.<key>` names."""
    from slmc_hpc.io.model import read_stored

    return read_stored(getattr(effective_config, key), f"effective.{key}", model.lattice)
