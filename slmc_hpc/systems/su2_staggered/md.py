"""Molecular dynamics on SU(2) links, and the choice of the MD step for a target acceptance.

Momenta P_mu(n) = sum_a p_a T_a with p_a ~ N(0, 1), K = sum p^2 / 2, links U <- exp(eps P) U
(re-projected onto SU(2) against rounding), momenta p <- p - eps d_a S. `md_steps: auto` is chosen
before thermalisation from the measured energy violation: for a second-order integrator the mean
<dH> of a trajectory scales as eps^4 and the acceptance is erfc(sqrt(<dH>)/2) (dH Gaussian with
variance 2<dH>, as <exp(-dH)> = 1 demands), so one measurement predicts the step count for the
target; a few rounds of trajectories refine it while the chains thermalise.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erfcinv

from slmc_hpc import parallel
from slmc_hpc.core.chains import ChainState
from slmc_hpc.systems.su2_staggered.lattice import Lattice4D
from slmc_hpc.systems.su2_staggered.links import draw_momenta, exp_algebra, mm, project_su2

#: md_steps auto: first guess of the step size per integrator, trajectories per chain and round, rounds.
FIRST_STEP = {"leapfrog": 0.05, "omelyan": 0.1}
TRAJECTORIES_PER_ROUND = 4
MIN_ROUNDS, MAX_ROUNDS = 3, 10


class LinkDynamics:
    """`core.hmc.Dynamics` for SU(2) link fields [B, 4, V, 2, 2] (MD in torch, state in numpy)."""

    def __init__(self, lattice: Lattice4D):
        self.lattice = lattice

    def field(self, configs: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(configs, dtype=np.complex128))

    def configs(self, field: torch.Tensor) -> np.ndarray:
        return field.numpy()

    def draw_momenta(self, rngs: list[np.random.Generator]) -> torch.Tensor:
        return draw_momenta(rngs, self.lattice.volume)

    def kinetic(self, momenta: torch.Tensor) -> np.ndarray:
        return 0.5 * (momenta * momenta).flatten(1).sum(dim=1).numpy()

    def drift(self, field: torch.Tensor, momenta: torch.Tensor, eps: float) -> torch.Tensor:
        return project_su2(mm(exp_algebra(momenta, eps), field))

    def kick(self, momenta: torch.Tensor, force: torch.Tensor, eps: float) -> torch.Tensor:
        return momenta - eps * force


def target_energy_violation(acceptance: float) -> float:
    """The mean dH whose trajectories are accepted with probability `acceptance`: (2 erfcinv(a))^2."""
    return float((2.0 * erfcinv(acceptance)) ** 2)


def tune_md_steps(make_stepper, state: ChainState, comm, integrator: str, trajectory_length: float, target: float):
    """md_steps for `target` acceptance, measured on real trajectories (which thermalise the chains meanwhile).

    `make_stepper(n)` is the HMC with n MD steps. Each round runs TRAJECTORIES_PER_ROUND trajectories of every
    chain; <dH> is estimated from <dH^2> (= <dH>^2 + 2<dH> for Gaussian dH, less noisy than <dH> itself),
    globally over the ranks (rank 0's numbers, broadcast), and the step count rescaled by (<dH>/target)^(1/4).
    It stops when the count is the same in two rounds in a row (after MIN_ROUNDS). Returns (md_steps, rows).
    """
    wanted = target_energy_violation(target)
    n = max(1, math.ceil(trajectory_length / FIRST_STEP[integrator]))
    rows, previous = [], None
    for round_ in range(MAX_ROUNDS):
        stepper = make_stepper(n)
        squares, accepted, count = 0.0, 0.0, 0
        for _ in range(TRAJECTORIES_PER_ROUND):
            info = stepper.step(state)
            dh = info.samples["dH"]
            squares += float(np.sum(dh * dh))
            accepted += float(np.sum(np.minimum(1.0, np.exp(-dh))))
            count += dh.size
        total = parallel.allreduce_sum(comm, np.array([squares, accepted, float(count)]))
        total = parallel.broadcast_array(comm, total)
        violation = math.sqrt(1.0 + total[0] / total[2]) - 1.0
        acceptance = total[1] / total[2]
        rows.append((n, acceptance, violation))
        scale = (max(violation, 1e-12) / wanted) ** 0.25
        chosen = int(min(4 * n, max(1, math.ceil(n * scale), n // 2)))
        if round_ + 1 >= MIN_ROUNDS and chosen == n and previous == n:
            break
        previous, n = n, chosen
    return n, rows
