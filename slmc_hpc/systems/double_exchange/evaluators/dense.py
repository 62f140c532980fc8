"""Dense LAPACK evaluator: the CPU default, batched over configurations; with eigenvectors, the exact force."""

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

    def omega_and_gradient(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Ω [B], eigenvalues [B, 2N], ∂Ω/∂S [B, N, 3]) from one `eigh` per configuration.

        Hellmann-Feynman: ∂E_k/∂S_i = (J/2) <k|σ_i|k>, and ∂Ω/∂E_k = f(E_k), so
        ∂Ω/∂S_i = (J/2) Σ_k f(E_k) <k|σ_i|k>: the electrons' spin density at site i. With a = <i↑|k>, b = <i↓|k>:
        <k|σ_i|k> = (2 Re(a* b), 2 Im(a* b), |a|² - |b|²).
        """
        eigenvalues, vectors = np.linalg.eigh(self.model.hamiltonian(spins))
        occupation = self.model.fermi(eigenvalues)[..., None, :]  # [B, 1, 2N]
        up, down = vectors[..., 0::2, :], vectors[..., 1::2, :]  # [B, N, 2N]: amplitudes on site i
        mixed = (up.conj() * down * occupation).sum(axis=-1)
        polar = ((up.real**2 + up.imag**2 - down.real**2 - down.imag**2) * occupation).sum(axis=-1)
        density = np.stack([2.0 * mixed.real, 2.0 * mixed.imag, polar], axis=-1)
        return self.model.grand_potential(eigenvalues), eigenvalues, 0.5 * self.model.J * density
