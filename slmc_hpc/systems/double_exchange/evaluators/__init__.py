"""Exact-weight evaluators behind one protocol: spins [B, N, 3] -> (Ω [B], eigenvalues [B, K]).

`dense` (LAPACK, CPU), `cupy` (batched GPU eigensolver) and `slepc` (a distributed PETSc matrix
on a sub-communicator) all agree with `dense` to 1e-10 relative. `SpinAction` turns any of them into
the framework's `ExactAction`: the dimensionless action Ω/T, with Ω as the effective models' target.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from slmc_hpc.core.protocols import Evaluation
from slmc_hpc.systems.double_exchange.physics import DoubleExchange

KINDS = ("dense", "cupy", "slepc")


class Evaluator(Protocol):
    """Exact weight of a batch of spin configurations."""

    model: DoubleExchange

    def omega(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ω per configuration [B] and the eigenvalues it came from [B, K] (ascending)."""
        ...


def make_evaluator(kind: str, model: DoubleExchange, comm=None, forces: bool = False, **options) -> Evaluator:
    """Build the evaluator named in `evaluator.kind`; `comm` is the group sharing one matrix (slepc); `forces`:
    the exact HMC's evaluator, which diagonalises with eigenvectors and keeps them (dense only)."""
    if kind == "dense":
        from slmc_hpc.systems.double_exchange.evaluators.dense import DenseEvaluator

        return DenseEvaluator(model, forces=forces)
    if kind == "cupy":
        from slmc_hpc.systems.double_exchange.evaluators.cupy import CupyEvaluator

        return CupyEvaluator(model, **options)
    if kind == "slepc":
        from slmc_hpc.systems.double_exchange.evaluators.slepc import SlepcEvaluator

        return SlepcEvaluator(model, comm=comm, **options)
    raise ValueError(f"unknown evaluator kind {kind!r}; expected one of {KINDS}")


class SpinAction:
    """The exact action S = Ω/T of spin configurations, from any evaluator.

    The rows kept per chain are Ω (`omega`, in units of t) and the eigenvalues, so a measurement needs
    no second diagonalisation; Ω is what an effective model H_eff learns.
    """

    def __init__(self, evaluator: Evaluator):
        self.evaluator = evaluator
        self.model = evaluator.model

    def evaluate(self, spins: np.ndarray) -> Evaluation:
        omega, eigenvalues = self.evaluator.omega(spins)
        omega = np.asarray(omega, dtype=np.float64)
        return Evaluation(omega / self.model.T, omega, {"omega": omega, "eigenvalues": eigenvalues})

    def action_of(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """S of configurations from the rows their evaluation left (a resumed checkpoint's)."""
        return np.asarray(rows["omega"], dtype=np.float64) / self.model.T
