"""An effective model and its training history in an HDF5 group (`/model` of run.h5, or `effective.load`).

Layout: one dataset per parameter tensor (named as in `model.parameters()`), attrs `kind`, `n_J`,
`n_layers`, `n_att`, `n_parameters`, `frozen`; the history (loss per step, acceptance per round,
...) as datasets under `history/`. The caller opens the file. Under MPI-IO every rank calls
`write_model` with the same (broadcast) model, as HDF5 metadata operations are collective (and the
datasets, checksummed with Fletcher-32, are written collectively too: `slmc_hpc.io.integrity`).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np

from slmc_hpc.effective import make_effective
from slmc_hpc.errors import InputError
from slmc_hpc.io.integrity import create_dataset, read
from slmc_hpc.lattice import Lattice

HISTORY = "history"


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> None:
    if name in group:
        del group[name]
    create_dataset(group, name, data=data)


def write_model(group: h5py.Group, model, history: dict | None = None, frozen: bool = False) -> None:
    """Store the parameters (float64, one dataset each), the architecture and the history in `group`."""
    for name, value in model.parameters().items():
        _replace(group, name, np.asarray(value, dtype=np.float64))
    group.attrs["kind"] = model.kind
    group.attrs["n_J"] = int(model.n_J)
    group.attrs["n_layers"] = int(getattr(model, "n_layers", 0))
    group.attrs["n_att"] = int(getattr(model, "n_att", 0))
    group.attrs["n_parameters"] = int(model.n_parameters())
    group.attrs["frozen"] = bool(frozen)
    group.attrs["lx"], group.attrs["ly"] = int(model.lattice.lx), int(model.lattice.ly)
    if history:
        target = group.require_group(HISTORY)
        for name, values in history.items():
            _replace(target, name, np.asarray(values))


def stored_lattice(group: h5py.Group) -> Lattice:
    """The lattice the stored model was trained on (attrs `lx`, `ly`; older files: the run's config)."""
    if "lx" in group.attrs:
        return Lattice(int(group.attrs["lx"]), int(group.attrs["ly"]))
    from ruamel.yaml import YAML

    model = YAML(typ="safe", pure=True).load(str(group.file.attrs["config_yaml"]))["model"]
    return Lattice(int(model["lx"]), int(model["ly"]))


def read_model(group: h5py.Group, lattice: Lattice):
    """The stored model, rebuilt on `lattice`, and its history: (model, dict of arrays)."""
    try:
        architecture = SimpleNamespace(
            kind=str(group.attrs["kind"]),
            n_J=int(group.attrs["n_J"]),
            n_layers=int(group.attrs["n_layers"]),
            n_att=int(group.attrs["n_att"]),
            load=None,
        )
    except KeyError as missing:
        raise InputError(f"{group.file.filename}:{group.name} holds no effective model (attribute {missing})") from None
    model = make_effective(architecture, lattice)
    optional = getattr(model, "OPTIONAL_PARAMETERS", ())
    expected = {name: value for name, value in model.parameters().items() if name not in optional}
    parameters = {}
    for name, value in expected.items():
        if name not in group or group[name].shape != value.shape:
            found = group[name].shape if name in group else "nothing"
            raise InputError(
                f"{group.file.filename}:{group.name}/{name}: expected a parameter of shape {value.shape}, found {found}"
            )
        parameters[name] = read(group[name])
    for name in optional:
        if name in group:
            parameters[name] = read(group[name])
    model.set_parameters(parameters)
    history = {name: read(ds) for name, ds in group[HISTORY].items()} if HISTORY in group else {}
    return model, history


def read_stored(path: str | Path, key: str, lattice: Lattice):
    """(model rebuilt on `lattice`, the lattice it was trained on) from the run file `path` (config key `key`)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            if "model" not in f:
                raise InputError(f"{key}: {path} holds no /model group (not a trained run?)")
            return read_model(f["model"], lattice)[0], stored_lattice(f["model"])
    except OSError as exc:
        raise InputError(f"{key}: cannot read {path}: {exc}") from None
