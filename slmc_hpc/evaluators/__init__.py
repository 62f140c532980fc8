"""Exact-weight evaluators behind one protocol: spins [B, N, 3] -> (Ω [B], eigenvalues [B, K]).

`dense` (LAPACK, CPU), `cupy` (batched GPU eigensolver) and `slepc` (a distributed PETSc matrix
on a sub-communicator) all agree with `dense` to 1e-10 relative (DESIGN §4).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np

from slmc_hpc.physics import DoubleExchange

KINDS = ("dense", "cupy", "slepc")


class Evaluator(Protocol):
    """Exact weight of a batch of spin configurations."""

    model: DoubleExchange

    def omega(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Ω per configuration [B] and the eigenvalues it came from [B, K] (ascending)."""
        ...


def make_evaluator(kind: str, model: DoubleExchange, comm=None, **options) -> Evaluator:
    """Build the evaluator named in `evaluator.kind`; `comm` is the group sharing one matrix (slepc)."""
    if kind == "dense":
        from slmc_hpc.evaluators.dense import DenseEvaluator

        return DenseEvaluator(model)
    if kind == "cupy":
        from slmc_hpc.evaluators.cupy import CupyEvaluator

        return CupyEvaluator(model, **options)
    if kind == "slepc":
        from slmc_hpc.evaluators.slepc import SlepcEvaluator

        return SlepcEvaluator(model, comm=comm, **options)
    raise ValueError(f"unknown evaluator kind {kind!r}; expected one of {KINDS}")
