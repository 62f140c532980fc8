"""Linear (Heisenberg) effective model of Liu et al. 2017 (docs/design.md §3).

    H_eff = E_0 - Σ_{n=1}^{n_J} J_n Σ_{<ij>_n} S_i·S_j,    Σ_{<ij>_n} = ½ Σ_i Σ_{δ∈D_n}

Everything runs on neighbour tables, so `delta_energy` costs O(number of shell neighbours), and on
elementwise operations with per-row reductions (no BLAS), so a row never depends on its batch.
"""

from __future__ import annotations

import numpy as np
import torch

from slmc_hpc.systems.double_exchange.lattice import Lattice


def shell_features(spins: np.ndarray, neighbor_tables: list[np.ndarray], biquadratic: bool = False) -> np.ndarray:
    """Regression features [1, -Σ_<ij>_1 S·S, ..., -Σ_<ij>_nJ S·S] (H_eff = features @ [E_0, J]), [B, 1 + n_J];
    with `biquadratic` also [Σ_<ij>_1 (S·S)², ..., Σ_<ij>_nJ (S·S)²] after them (K_n), [B, 1 + 2 n_J].

    Each shell's neighbour spins are gathered once for both kinds of column.
    """
    spins = np.asarray(spins, dtype=np.float64)
    heisenberg, quadratic = [np.ones(spins.shape[0])], []
    for table in neighbor_tables:
        neighbours = spins[:, table]  # [B, N, Z, 3], aliases counted
        field = neighbours.sum(axis=2)  # [B, N, 3]: Σ_δ S_{i+δ}
        heisenberg.append(-0.5 * (spins * field).sum(axis=(1, 2)))
        if biquadratic:
            dots = np.einsum("bia,biza->biz", spins, neighbours)  # [B, N, Z]: S_i·S_{i+δ}
            quadratic.append(0.5 * (dots * dots).sum(axis=(1, 2)))
    return np.stack(heisenberg + quadratic, axis=1)


class LinearModel:
    """Heisenberg couplings over the shells 1..n_J, plus the constant E_0.

    With `biquadratic=True` also K_n Σ_<ij>_n (S_i·S_j)² per shell: the transformer's proposal model,
    so that the nested inner chain moves under the same kind of read-out it is corrected with.
    """

    kind = "linear"
    #: The least-squares coefficients: everything else of the model fixes its features (none here).
    READOUT_PARAMETERS = ("e0", "couplings", "biquadratic")
    #: Parameters a stored model may lack (the biquadratic terms of the proposal model).
    OPTIONAL_PARAMETERS = ("biquadratic",)

    def __init__(self, lattice: Lattice, n_J: int, biquadratic: bool = False):
        if n_J < 1:
            raise ValueError(f"n_J must be >= 1, got {n_J}")
        self.lattice, self.n_J, self.n_sites = lattice, n_J, lattice.n_sites
        self.neighbor_tables = [lattice.neighbors(n) for n in range(1, n_J + 1)]
        # All shells side by side, for the local field of delta_energy; `shell_of_column` maps a column to J_n.
        self._all_neighbors = np.ascontiguousarray(np.concatenate(self.neighbor_tables, axis=1))
        self._shell_of_column = np.concatenate([np.full(t.shape[1], k) for k, t in enumerate(self.neighbor_tables)])
        # A_n[i, i]: vectors of D_n that alias to the site itself (small lattices); they enter ΔH quadratically.
        self._self_counts = np.stack(
            [(t == np.arange(self.n_sites)[:, None]).sum(axis=1) for t in self.neighbor_tables]
        )
        self.e0 = 0.0
        self.couplings = np.zeros(n_J)
        self.biquadratic = np.zeros(n_J) if biquadratic else None
        self._update_tables()

    def _update_tables(self) -> None:
        self._column_weights = self.couplings[self._shell_of_column]
        self._self_weights = self.couplings @ self._self_counts  # [N]: Σ_n J_n A_n[i, i]
        # K per column; a column that aliases to the site itself adds (S_k·S_k)² = 1, a constant (the kernel skips it).
        quad = self.biquadratic if self.biquadratic is not None else np.zeros(self.n_J)
        self._column_quad = np.ascontiguousarray(quad[self._shell_of_column])

    # -- protocol -------------------------------------------------------------------------------
    def features(self, spins: np.ndarray) -> np.ndarray:
        return shell_features(spins, self.neighbor_tables, biquadratic=self.biquadratic is not None)

    def energy(self, spins: np.ndarray) -> np.ndarray:
        features = self.features(spins)
        energy = self.e0 + (features[:, 1 : 1 + self.n_J] * self.couplings).sum(axis=1)
        if self.biquadratic is not None:
            energy = energy + (features[:, 1 + self.n_J :] * self.biquadratic).sum(axis=1)
        return energy

    def delta_energy(
        self, spins: np.ndarray, sites: np.ndarray, new_spins: np.ndarray, energy: np.ndarray | None = None
    ) -> np.ndarray:
        """ΔH = -[(s' - s)·h_k + ½ c_k |s' - s|²] with h_k = Σ_{n,δ} J_n S_{k+δ} and c_k = Σ_n J_n A_n[k, k].

        The second term is exact for shell vectors that alias to k itself (then S_k·S_k changes
        only by |s'|² - |s|², which the identity accounts for). `energy` is not needed here.
        """
        rows = np.arange(spins.shape[0])
        old = spins[rows, sites]
        step = np.asarray(new_spins, dtype=np.float64) - old
        neighbours = spins[rows[:, None], self._all_neighbors[sites]]  # [B, Z, 3]
        field = (neighbours * self._column_weights[:, None]).sum(axis=1)
        delta = -((step * field).sum(axis=1) + 0.5 * self._self_weights[sites] * (step * step).sum(axis=1))
        if self.biquadratic is not None:
            new = np.asarray(new_spins, dtype=np.float64)
            others = self._all_neighbors[sites] != sites[:, None]  # [B, Z]: aliases of k itself are constant
            after = np.einsum("bza,ba->bz", neighbours, new) ** 2
            before = np.einsum("bza,ba->bz", neighbours, old) ** 2
            delta = delta + (others * self._column_quad * (after - before)).sum(axis=1)
        return delta

    def force(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H_eff [B], ∂H_eff/∂S [B, N, 3]): -h_k from the Heisenberg couplings, 2 K (S_k·S_j) S_j from the
        biquadratic ones (every δ of a shell has its -δ, so each pair's two halves give the same term)."""
        spins = np.asarray(spins, dtype=np.float64)
        neighbours = spins[:, self._all_neighbors]  # [B, N, Z, 3]
        gradient = -np.einsum("z,bnza->bna", self._column_weights, neighbours)
        if self.biquadratic is not None:
            dots = np.einsum("bna,bnza->bnz", spins, neighbours)
            gradient = gradient + 2.0 * np.einsum("z,bnz,bnza->bna", self._column_quad, dots, neighbours)
        return self.energy(spins), gradient

    def field_tables(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(neighbours [N, Z], column weights J_n [Z], self weights c_k [N], column K_n [Z]): the local ΔH."""
        return self._all_neighbors, self._column_weights, self._self_weights, self._column_quad

    def metropolis_chain(
        self, spins: np.ndarray, sites, dirs, uniforms, temperature: float, start: int = 0, stop: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Moves `start:stop` of a Metropolis chain under exp(-H_eff/T), compiled, in place on `spins`.

        Returns (ΔH of the chain [B], accepted moves [B]); see `samplers.heisenberg_chain`.
        """
        from slmc_hpc.systems.double_exchange.samplers.heisenberg_chain import heisenberg_metropolis

        return heisenberg_metropolis(spins, sites, dirs, uniforms, self.field_tables(), temperature, start, stop)

    def parameters(self) -> dict[str, np.ndarray]:
        parameters = {"e0": np.array(self.e0), "couplings": self.couplings.copy()}
        if self.biquadratic is not None:
            parameters["biquadratic"] = self.biquadratic.copy()
        return parameters

    def set_parameters(self, parameters: dict[str, np.ndarray]) -> None:
        couplings = np.asarray(parameters["couplings"], dtype=np.float64).reshape(self.n_J)
        self.e0, self.couplings = float(np.asarray(parameters["e0"])), couplings.copy()
        if self.biquadratic is not None:
            quad = parameters.get("biquadratic", np.zeros(self.n_J))
            self.biquadratic = np.asarray(quad, dtype=np.float64).reshape(self.n_J).copy()
        self._update_tables()

    def n_parameters(self) -> int:
        return self.n_readout

    def architecture(self) -> dict:
        """What a stored model must match to be reused (`/model` attrs)."""
        return {"kind": self.kind, "n_J": self.n_J, "lx": self.lattice.lx, "ly": self.lattice.ly}

    @property
    def n_readout(self) -> int:
        """Columns of `features` (E_0, J_1..J_nJ, and K_1..K_nJ where biquadratic)."""
        return 1 + self.n_J * (1 if self.biquadratic is None else 2)

    def set_readout(self, e0: float, coefficients: np.ndarray) -> None:
        """The result of a linear fit (fit_linear): [J_1..J_nJ] or [J..., K...] (biquadratic)."""
        coefficients = np.asarray(coefficients, dtype=np.float64)
        parameters = {"e0": e0, "couplings": coefficients[: self.n_J]}
        if self.biquadratic is not None:
            parameters["biquadratic"] = coefficients[self.n_J : 2 * self.n_J]
        self.set_parameters(parameters)

    # -- training (the Trainer works on any model with a torch module) ---------------------------
    def torch_module(self) -> torch.nn.Module:
        """A differentiable copy (parameters named as in `parameters()`); the trainer copies results back."""
        if self.biquadratic is not None:
            raise NotImplementedError("the biquadratic linear model is fitted by least squares only")
        return _LinearModule(self)


class _LinearModule(torch.nn.Module):
    """H_eff = E_0 + features @ J in torch, for AdamW training of the linear model."""

    def __init__(self, model: LinearModel):
        super().__init__()
        self.e0 = torch.nn.Parameter(torch.tensor(model.e0, dtype=torch.float64))
        self.couplings = torch.nn.Parameter(torch.tensor(model.couplings, dtype=torch.float64))
        self.tables = [torch.from_numpy(t) for t in model.neighbor_tables]

    def forward(self, spins: torch.Tensor) -> torch.Tensor:
        bonds = torch.stack([-0.5 * (spins * spins[:, t].sum(dim=2)).sum(dim=(1, 2)) for t in self.tables], dim=1)
        return self.e0 + (bonds * self.couplings).sum(dim=1)
