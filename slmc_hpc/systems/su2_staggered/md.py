"""Molecular dynamics on SU(2) links (`core.hmc.Dynamics`).

Momenta P_mu(n) = sum_a p_a T_a with p_a ~ N(0, 1), K = sum p^2 / 2, links U <- exp(eps P) U
(re-projected onto SU(2) against rounding), momenta p <- p - eps d_a S. `md_steps: auto` is chosen by
`core.hmc.tune_md_steps`, from a first step of FIRST_STEP[integrator].
"""

from __future__ import annotations

import numpy as np
import torch

from slmc_hpc.systems.su2_staggered.lattice import Lattice4D
from slmc_hpc.systems.su2_staggered.links import draw_momenta, exp_algebra, mm, project_su2

#: md_steps auto: the step size the tuning starts from, per integrator.
FIRST_STEP = {"leapfrog": 0.05, "omelyan": 0.1}


class LinkDynamics:
    """`core.hmc.Dynamics` for SU(2) link fields [B, 4, V, 2, 2] (MD in torch, state in numpy)."""

    def __init__(self, lattice: Lattice4D):
        self.lattice = lattice

    def field(self, configs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(configs, dtype=np.complex128))

    def configs(self, field: torch.Tensor) -> np.ndarray:
        return field.numpy()

    def draw_momenta(self, rngs: list[np.random.Generator], field: torch.Tensor) -> torch.Tensor:
        return draw_momenta(rngs, self.lattice.volume)

    def kinetic(self, momenta: torch.Tensor) -> np.ndarray:
        return 0.5 * (momenta * momenta).flatten(1).sum(dim=1).numpy()

    def drift(self, field: torch.Tensor, momenta: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
        """U <- exp(eps P) U; the algebra-valued momenta are the same at every U (left-invariant frame)."""
        return project_su2(mm(exp_algebra(momenta, eps), field)), momenta

    def kick(self, momenta: torch.Tensor, force: torch.Tensor, eps: float) -> torch.Tensor:
        return momenta - eps * force
