"""The double-exchange (classical Kondo lattice) model: h(S), the grand potential Ω, observables.

Conventions (docs/design.md §1): orbital index 2i + s; h(S) holds the hoppings and the (J/2) S·σ term,
and the chemical potential enters only through the Fermi factors, Ω = -T Σ_k log(1 + e^{-(E_k-μ)/T}).
This module imports neither MPI nor HDF5 so it can be used and tested alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property

import numpy as np

from slmc_hpc.systems.double_exchange.lattice import Lattice

#: Scalar observables, one value per configuration (docs/design.md §1); `sq` (S(q), [..., ly, lx]) comes too.
SCALAR_OBSERVABLES = ("omega", "m", "ms", "nn", "density", "electron_energy")


class DoubleExchange:
    """Classical Heisenberg spins coupled to electrons on a periodic square lattice.

    >>> model = DoubleExchange(lx=6, ly=6, hoppings={1: 1.0}, J=1.0, mu=0.0, T=0.05)
    >>> omega = model.omega(spins)            # spins [..., N, 3] -> Ω per configuration (total)
    >>> obs = model.observables(spins)        # dict of arrays, names of SCALAR_OBSERVABLES + "sq"
    """

    def __init__(self, lx: int, ly: int, hoppings: Mapping[int, float], J: float, mu: float, T: float):
        if T < 0:
            raise ValueError(f"T must be >= 0, got {T}")
        self.lattice = Lattice(lx, ly)
        self.hoppings = {int(n): float(t) for n, t in hoppings.items()}
        if any(n < 1 for n in self.hoppings):
            raise ValueError(f"hopping shells must be >= 1, got {sorted(self.hoppings)}")
        self.J, self.mu, self.T = float(J), float(mu), float(T)
        self.n_sites = self.lattice.n_sites
        self.n_orbitals = 2 * self.n_sites
        self._diag = 2 * np.arange(self.n_sites)

    @cached_property
    def hopping_matrix(self) -> np.ndarray:
        """Spin-independent part: -Σ_n t_n Σ_{i,δ} c†_{i+δ,s} c_{i,s}, real [2N, 2N].

        Built on first use only: the distributed (slepc) evaluator never needs it densely.
        """
        site_hopping = np.zeros((self.n_sites, self.n_sites))
        for n, t in self.hoppings.items():
            # A_n[i, j] counts δ with i + δ = j; the element (j, i) gets -t per such δ.
            site_hopping -= t * self.lattice.shell_adjacency(n).T
        return np.kron(site_hopping, np.eye(2))

    def hamiltonian(self, spins: np.ndarray) -> np.ndarray:
        """h(S): complex128 [..., 2N, 2N] for spins [..., N, 3]."""
        spins = np.asarray(spins, dtype=np.float64)
        h = np.empty(spins.shape[:-2] + (self.n_orbitals, self.n_orbitals), dtype=np.complex128)
        h[...] = self.hopping_matrix
        self.add_exchange(h, spins)
        return h

    def add_exchange(self, h: np.ndarray, spins: np.ndarray) -> None:
        """Add (J/2) S_i·σ to the 2x2 diagonal blocks of h in place (shared by every evaluator)."""
        up, dn = self._diag, self._diag + 1
        half_j = 0.5 * self.J
        sx, sy, sz = spins[..., 0], spins[..., 1], spins[..., 2]
        h[..., up, up] += half_j * sz
        h[..., dn, dn] -= half_j * sz
        h[..., up, dn] += half_j * (sx - 1j * sy)
        h[..., dn, up] += half_j * (sx + 1j * sy)

    def grand_potential(self, eigenvalues: np.ndarray) -> np.ndarray:
        """Ω from eigenvalues [..., K] (all of them, or all below μ + 40T), computed stably."""
        x = np.asarray(eigenvalues) - self.mu
        if self.T == 0.0:
            return np.sum(np.where(x < 0, x, 0.0), axis=-1)
        return -self.T * np.sum(np.logaddexp(0.0, -x / self.T), axis=-1)

    def fermi(self, eigenvalues: np.ndarray) -> np.ndarray:
        """Occupation f(E) (a step function at T = 0)."""
        x = np.asarray(eigenvalues) - self.mu
        if self.T == 0.0:
            return np.where(x < 0, 1.0, np.where(x == 0, 0.5, 0.0))
        return 0.5 * (1.0 - np.tanh(0.5 * x / self.T))

    def eigenvalues(self, spins: np.ndarray) -> np.ndarray:
        """All eigenvalues of h(S) (dense LAPACK), ascending, [..., 2N]."""
        return np.linalg.eigvalsh(self.hamiltonian(spins))

    def omega(self, spins: np.ndarray) -> np.ndarray:
        """Ω per configuration (total, not per site), float64 [...]."""
        return self.grand_potential(self.eigenvalues(spins))

    def spin_observables(self, spins: np.ndarray) -> dict[str, np.ndarray]:
        """The observables that need no diagonalisation: m, ms, nn and S(q)."""
        spins = np.asarray(spins, dtype=np.float64)
        n = self.n_sites
        lat = self.lattice
        m = np.linalg.norm(spins.sum(axis=-2), axis=-1) / n
        ms = np.linalg.norm(np.einsum("i,...ik->...k", lat.staggered_sign, spins), axis=-1) / n
        neighbor_spins = spins[..., lat.neighbors(1), :]  # [..., N, z, 3]
        nn = np.einsum("...ik,...izk->...", spins, neighbor_spins) / (n * lat.neighbors(1).shape[1])
        grid = spins.reshape(spins.shape[:-2] + (lat.ly, lat.lx, 3))
        amplitudes = np.fft.fft2(grid, axes=(-3, -2))
        sq = np.sum(np.abs(amplitudes) ** 2, axis=-1) / n
        return {"m": m, "ms": ms, "nn": nn, "sq": sq}

    def observables(self, spins: np.ndarray, eigenvalues: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """All observables of docs/design.md §1 per configuration; pass eigenvalues to reuse a diagonalisation."""
        if eigenvalues is None:
            eigenvalues = self.eigenvalues(spins)
        occupation = self.fermi(eigenvalues)
        out = {
            "omega": self.grand_potential(eigenvalues) / self.n_sites,
            "density": occupation.sum(axis=-1) / self.n_sites,
            "electron_energy": np.sum(eigenvalues * occupation, axis=-1) / self.n_sites,
        }
        out.update(self.spin_observables(spins))
        return out


def random_spins(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform random unit vectors, float64 [*shape, 3] (normalised Gaussians)."""
    v = rng.standard_normal(shape + (3,))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)
