"""Dense LAPACK evaluator: the CPU default, batched over configurations."""

from __future__ import annotations

import numpy as np

from slmc_hpc.systems.double_exchange.physics import DoubleExchange


class DenseEvaluator:
    """All eigenvalues of h(S) by numpy's batched `eigvalsh` (LAPACK zheevd through OpenBLAS)."""

    def __init__(self, model: DoubleExchange):
        self.model = model

    def omega(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        eigenvalues = np.linalg.eigvalsh(self.model.hamiltonian(spins))
        return self.model.grand_potential(eigenvalues), eigenvalues
