"""Effective models H_eff behind one protocol (docs/design.md §3): `linear` (Heisenberg) and `transformer`.

The inner SLMC chain calls `delta_energy` once per proposal and the outer test calls `energy`, so
both must be the very same float64 function, and a row's result must not depend on the other
rows of the batch (bitwise), so that chain histories do not depend on the number of ranks.
"""

from __future__ import annotations

import numpy as np

from slmc_hpc.core.protocols import EffectiveModel
from slmc_hpc.io.model import StoredModel
from slmc_hpc.systems.double_exchange.lattice import Lattice

KINDS = ("linear", "transformer")


def readout_shells(n_J: int | str, lattice: Lattice) -> int:
    """`effective.n_J` on `lattice`: `auto` is every distance shell of the torus (the read-out is a dense
    N x N coupling matrix whatever n_J, so all shells cost the transformer nothing more, and the linear
    model's compiled chain stays far cheaper than one diagonalisation)."""
    return lattice.n_distance_shells if n_J == "auto" else int(n_J)


def make_effective(effective_config, lattice: Lattice) -> EffectiveModel:
    """Build the model named in `effective.kind` from an object with kind, n_J, n_layers, n_att.

    Only the architecture is built here (untrained: zero couplings, H_eff = 0); `effective.load`
    and `effective.init` rebuild a stored one (`rebuild`, `transfer`, `starting`).
    """
    kind = effective_config.kind
    n_J = readout_shells(effective_config.n_J, lattice)
    if kind == "linear":
        from slmc_hpc.systems.double_exchange.effective.linear import LinearModel

        return LinearModel(lattice, n_J=n_J)
    if kind == "transformer":
        from slmc_hpc.systems.double_exchange.effective.transformer import TransformerModel

        return TransformerModel(
            lattice, n_J=n_J, n_layers=int(effective_config.n_layers), n_att=int(effective_config.n_att)
        )
    raise ValueError(f"unknown effective model kind {kind!r}; expected one of {KINDS}")


def check_architecture(stored: EffectiveModel, effective_config, source: str, allow_other_n_J: bool = False) -> None:
    """Refuse a stored model that is not what the job's `effective` section asks for, naming the key.

    An explicit `n_J` must match unless the read-out is refitted anyway (`allow_other_n_J`, size
    transfer); `auto` takes the stored model's.
    """
    from slmc_hpc.errors import InputError

    wanted = {"kind": effective_config.kind}
    if effective_config.kind == "transformer":
        wanted.update(n_layers=int(effective_config.n_layers), n_att=int(effective_config.n_att))
    if effective_config.n_J != "auto" and not allow_other_n_J:
        wanted["n_J"] = int(effective_config.n_J)
    for key, value in wanted.items():
        found = stored.architecture().get(key)
        if found != value:
            raise InputError(
                f"effective.{key}: the job asks for {value}, but the model in {source} has {found}; "
                f"set effective.{key}: {found} in the job, or train a new model"
            )


def transfer(stored, lattice: Lattice, effective_config, stored_sites: int) -> EffectiveModel:
    """A model of the job's architecture on `lattice`, started from `stored` (trained on any lattice).

    The parameters are per shell, so they carry over: attention weights as they are, read-out
    couplings J_n (and the transformer's K_n) shell by shell (shells the stored model lacks start
    at 0, extra ones are dropped), and E_0 scaled by the number of sites (`stored_sites` -> N: Ω is
    extensive). Training refits the read-out exactly on this lattice's data before anything else.
    """
    model = make_effective(effective_config, lattice)
    carried = {name: value for name, value in stored.parameters().items() if not name.startswith("proposal")}
    parameters = {**model.parameters(), **carried}
    for name in ("couplings", "biquadratic"):  # per shell: carried shell by shell
        if name not in parameters:
            continue
        values = np.zeros(model.n_J)
        old = np.asarray(stored.parameters().get(name, values), dtype=np.float64)
        values[: min(len(old), model.n_J)] = old[: model.n_J]
        parameters[name] = values
    parameters["e0"] = np.asarray(stored.parameters()["e0"], dtype=np.float64) * lattice.n_sites / stored_sites
    model.set_parameters(parameters)
    return model


def stored_lattice(stored: StoredModel) -> Lattice:
    """The lattice a stored model was trained on (attrs `lx`, `ly`; older files: the run's config)."""
    if "lx" in stored.attrs:
        return Lattice(int(stored.attrs["lx"]), int(stored.attrs["ly"]))
    from ruamel.yaml import YAML

    model = YAML(typ="safe", pure=True).load(stored.config_yaml)["model"]
    return Lattice(int(model["lx"]), int(model["ly"]))


def rebuild(stored: StoredModel, lattice: Lattice) -> EffectiveModel:
    """The stored model on `lattice` (its parameters are per shell, so any lattice will do).

    Every parameter of the architecture must be there with its shape; the transformer's optional ones
    (the proposal, stored once it was fitted; the biquadratic read-out, absent from older files) may not.
    """
    from types import SimpleNamespace

    from slmc_hpc.errors import InputError

    attrs = stored.attrs
    architecture = SimpleNamespace(
        kind=str(attrs["kind"]),
        n_J=int(attrs["n_J"]),
        n_layers=int(attrs.get("n_layers", 0)),
        n_att=int(attrs.get("n_att", 0)),
    )
    if architecture.kind not in KINDS:
        raise InputError(f"{stored.source}:/model holds a {architecture.kind} model, not one of {', '.join(KINDS)}")
    model = make_effective(architecture, lattice)
    optional = model.OPTIONAL_PARAMETERS
    parameters = {}
    for name, value in model.parameters().items():
        if name in optional:  # set as stored below (a proposal of another lattice is refitted, not used)
            continue
        found = stored.parameters.get(name)
        if found is None or found.shape != value.shape:
            shape = "nothing" if found is None else found.shape
            raise InputError(
                f"{stored.source}:/model/{name}: expected a parameter of shape {value.shape}, found {shape}"
            )
        parameters[name] = found
    parameters.update({name: stored.parameters[name] for name in optional if name in stored.parameters})
    model.set_parameters(parameters)
    return model
