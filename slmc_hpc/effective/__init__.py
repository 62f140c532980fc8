"""Effective models H_eff behind one protocol (DESIGN §3): `linear` (Heisenberg) and `transformer`.

The inner SLMC chain calls `delta_energy` once per proposal and the outer test calls `energy`, so
both must be the very same float64 function, and a row's result must not depend on the other
rows of the batch (bitwise), so that chain histories do not depend on the number of ranks.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from slmc_hpc.lattice import Lattice

KINDS = ("linear", "transformer")


class EffectiveModel(Protocol):
    """H_eff(S) for a batch of spin configurations [B, N, 3] (float64 at every boundary)."""

    kind: str

    def energy(self, spins: np.ndarray) -> np.ndarray:
        """H_eff per configuration [B]."""
        ...

    def delta_energy(
        self, spins: np.ndarray, sites: np.ndarray, new_spins: np.ndarray, energy: np.ndarray | None = None
    ) -> np.ndarray:
        """energy(after) - energy(before) [B] for spins[b, sites[b]] -> new_spins[b]; `energy` = current H_eff."""
        ...

    def parameters(self) -> dict[str, np.ndarray]: ...

    def set_parameters(self, parameters: dict[str, np.ndarray]) -> None: ...

    def n_parameters(self) -> int: ...


def make_effective(effective_config, lattice: Lattice) -> EffectiveModel:
    """Build the model named in `effective.kind` from an object with kind, n_J, n_layers, n_att.

    Only the architecture is built here (untrained: zero couplings); `effective.load` is the
    driver's business (it reads the stored parameters with `slmc_hpc.io.model.read_model`).
    """
    kind = effective_config.kind
    if kind == "linear":
        from slmc_hpc.effective.linear import LinearModel

        return LinearModel(lattice, n_J=int(effective_config.n_J))
    if kind == "transformer":
        from slmc_hpc.effective.transformer import TransformerModel

        return TransformerModel(
            lattice,
            n_J=int(effective_config.n_J),
            n_layers=int(effective_config.n_layers),
            n_att=int(effective_config.n_att),
        )
    raise ValueError(f"unknown effective model kind {kind!r}; expected one of {KINDS}")
