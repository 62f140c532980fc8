"""Dense LAPACK evaluator: the CPU default, batched over configurations; with eigenvectors, the exact force."""

from __future__ import annotations

import numpy as np
import scipy.linalg

from slmc_hpc.core.memo import ConfigurationMemo
from slmc_hpc.systems.double_exchange.physics import DoubleExchange

#: Memory kept for diagonalisations that exact HMC asks for again (per evaluator).
FORCE_CACHE_BYTES = 64 * 2**20


class DenseEvaluator:
    """All eigenvalues of h(S) by numpy's batched `eigvalsh` (LAPACK zheevd through OpenBLAS).

    With `forces` (exact HMC), Ω also comes from the `eigh` that gives the force, and each configuration's
    (Ω, eigenvalues, ∂Ω/∂S) is kept: a trajectory's last force is taken at the configuration that the exact
    test then evaluates, and the next trajectory starts where the last one ended (accepted) or started
    (rejected), so the test and the first force cost no diagonalisation. Ω is then always the `eigh` one, a
    deterministic function of the configuration (a resumed run recomputes it bit for bit).
    """

    def __init__(self, model: DoubleExchange, forces: bool = False):
        self.model, self.forces = model, forces
        self._kept = ConfigurationMemo(FORCE_CACHE_BYTES)

    @property
    def eigh_count(self) -> int:
        """Diagonalisations with eigenvectors done (kept results not counted)."""
        return self._kept.computed

    def omega(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.forces:
            omega, eigenvalues, _ = self.omega_and_gradient(spins)
            return omega, eigenvalues
        eigenvalues = np.linalg.eigvalsh(self.model.hamiltonian(spins))
        return self.model.grand_potential(eigenvalues), eigenvalues

    def omega_and_gradient(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(Ω [B], eigenvalues [B, 2N], ∂Ω/∂S [B, N, 3]), one `eigh` per configuration not diagonalised lately."""
        spins = np.asarray(spins, dtype=np.float64)

        def diagonalise(indices: np.ndarray) -> list[tuple[float, np.ndarray, np.ndarray]]:
            return list(zip(*self._diagonalise(spins[indices]), strict=True))

        omega, eigenvalues, gradient = zip(*self._kept.results(spins, diagonalise), strict=True)
        return np.array(omega), np.stack(eigenvalues), np.stack(gradient)

    def _diagonalise(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Hellmann-Feynman: ∂E_k/∂S_i = (J/2) <k|σ_i|k>, and ∂Ω/∂E_k = f(E_k), so
        ∂Ω/∂S_i = (J/2) Σ_k f(E_k) <k|σ_i|k>: the electrons' spin density at site i. With a = <i↑|k>, b = <i↓|k>:
        <k|σ_i|k> = (2 Re(a* b), 2 Im(a* b), |a|² - |b|²).

        LAPACK's zheevr (MRRR) gives the eigenvectors 20-30% faster than numpy's zheevd at 2N = 288-512 here.
        """
        matrices = self.model.hamiltonian(spins)
        eigenvalues = np.empty(matrices.shape[:-1])
        vectors = np.empty_like(matrices)
        for b, matrix in enumerate(matrices):
            eigenvalues[b], vectors[b] = scipy.linalg.eigh(matrix, driver="evr", overwrite_a=True, check_finite=False)
        occupation = self.model.fermi(eigenvalues)[..., None, :]  # [B, 1, 2N]
        up, down = vectors[..., 0::2, :], vectors[..., 1::2, :]  # [B, N, 2N]: amplitudes on site i
        mixed = (up.conj() * down * occupation).sum(axis=-1)
        polar = ((up.real**2 + up.imag**2 - down.real**2 - down.imag**2) * occupation).sum(axis=-1)
        density = np.stack([2.0 * mixed.real, 2.0 * mixed.imag, polar], axis=-1)
        return self.model.grand_potential(eigenvalues), eigenvalues, 0.5 * self.model.J * density
