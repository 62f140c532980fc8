"""An effective model and its training history in an HDF5 group (`/model` of run.h5, or `effective.load`).

Layout: one dataset per parameter tensor (named as in `model.parameters()`), the model's `architecture()`
as attrs (kind and sizes) plus `n_parameters` and `frozen`; the history (loss per step, acceptance per
round, ...) as datasets under `history/`. The caller opens the file. Under MPI-IO every rank calls
`write_model` with the same (broadcast) model, as HDF5 metadata operations are collective (and the
datasets, checksummed with Fletcher-32, are written collectively too: `slmc_hpc.io.integrity`).
Reading gives the raw `StoredModel`: rebuilding a model from it is its system's business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from slmc_hpc.errors import InputError
from slmc_hpc.io.integrity import READ_ERRORS, create_dataset, read
from slmc_hpc.io.runfile import plain_value

HISTORY = "history"


def _replace(group: h5py.Group, name: str, data: np.ndarray) -> None:
    if name in group:
        del group[name]
    create_dataset(group, name, data=data)


def write_model(group: h5py.Group, model, history: dict | None = None, frozen: bool = False) -> None:
    """Store the parameters (float64, one dataset each), the architecture and the history in `group`."""
    for name, value in model.parameters().items():
        _replace(group, name, np.asarray(value, dtype=np.float64))
    for key, value in model.architecture().items():
        group.attrs[key] = value
    group.attrs["n_parameters"] = int(model.n_parameters())
    group.attrs["frozen"] = bool(frozen)
    if history:
        target = group.require_group(HISTORY)
        for name, values in history.items():
            _replace(target, name, np.asarray(values))


@dataclass
class StoredModel:
    """A model as stored: its attrs (architecture), its parameter tensors, its history and the run's config."""

    source: str
    attrs: dict[str, Any]
    parameters: dict[str, np.ndarray]
    history: dict[str, np.ndarray] = field(default_factory=dict)
    config_yaml: str = ""

    @property
    def kind(self) -> str:
        return str(self.attrs["kind"])


def read_model_group(group: h5py.Group, source: str) -> StoredModel:
    """Everything in a model group, read through its checksums."""
    if "kind" not in group.attrs:
        raise InputError(f"{source}:{group.name} holds no effective model (attribute 'kind')")
    attrs = {key: plain_value(value) for key, value in group.attrs.items()}
    parameters = {name: read(ds) for name, ds in group.items() if isinstance(ds, h5py.Dataset)}
    history = {name: read(ds) for name, ds in group[HISTORY].items()} if HISTORY in group else {}
    config_yaml = str(plain_value(group.file.attrs.get("config_yaml", "")))
    return StoredModel(source, attrs, parameters, history, config_yaml)


def read_stored(path: str | Path, key: str) -> StoredModel:
    """The model stored in the run file `path`, which the config key `key` named (for the messages)."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            if "model" not in f:
                raise InputError(f"{key}: {path} holds no /model group (not a trained run?)")
            return read_model_group(f["model"], str(path))
    except READ_ERRORS as exc:
        raise InputError(f"{key}: cannot read {path}: {exc}") from None
