"""O(3)-equivariant transformer effective model (Nagai & Tomiya, JPSJ 93, 114007 (2024); docs/design.md §3).

Layer l maps effective spins S^(l-1) -> S^(l) (S^(0) = S):

    S^α_i   = Σ_{n=0}^{n_att} W^{α,l}_n Σ_{δ∈D_n} S^(l-1)_{i+δ}      α ∈ {Q, K, V}
    M_ij    = ReLU((1/√3) Σ_μ S^Q_iμ S^K_jμ)                          (global attention)
    S^(l)_i = normalize(S^(l-1)_i + Σ_j M_ij S^V_j)

then the read-out over the distance shells n = 1..n_J, Heisenberg plus biquadratic,

    H_eff = E_0 - Σ_n J_n Σ_{<ij>_n} S^(L)_i·S^(L)_j + Σ_n K_n Σ_{<ij>_n} (S^(L)_i·S^(L)_j)².

Only dot products of spins enter M and the read-out, so H_eff is O(3) invariant and S^(L)
equivariant. The biquadratic terms are the four-spin part of Ω that a Heisenberg read-out cannot
express: measured at L = 12, T = 0.05 on 1600 configurations of the chains' distribution, the
all-shell Heisenberg fit leaves an rms residual of 0.051 in Ω, with K_n on every shell 0.030 (a
predicted outer acceptance of 0.67 instead of 0.47), and the attention trained on top of the
Heisenberg read-out had lowered it by about 1%. Both read-outs are linear in (E_0, J, K) and are
solved exactly by least squares (`fit_linear`).

Speed: the inner SLMC chain calls `energy` once per proposal, so a forward pass is a handful of
batched matrix products on cached [3N, N] mixing matrices (Σ_n W_n A_n, rebuilt only when the
parameters change). Every product is a `bmm` whose per-row shape does not depend on the batch
size, so `energy(x)[b]` equals `energy(x[b:b+1])[0]` bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slmc_hpc.systems.double_exchange.lattice import Lattice

#: Configurations per forward pass when H_eff is evaluated on a whole data set ([B, N, N] per layer).
CHUNK = 256

#: W^Q, W^K start small but non-zero (ReLU at exactly zero passes no gradient); W^V starts at zero.
INIT_SCALE = 0.1
INIT_SEED = 20240807


def _shell_adjacencies(lattice: Lattice, shells: range) -> torch.Tensor:
    return torch.from_numpy(np.stack([lattice.shell_adjacency(n) for n in shells]))


def _shell_pairs(lattice: Lattice, shells: range) -> torch.Tensor:
    """[3, P] int64 (row i, column i+δ, shell index) for every δ of every shell: the read-out as a sparse sum.

    All distance shells of a 32x32 lattice would make a dense [n_J, N, N] stack of 1.6 GB; the pair
    list has ~1.6 N² entries whatever n_J.
    """
    rows, columns, index = [], [], []
    for k, n in enumerate(shells):
        table = lattice.neighbors(n)
        rows.append(np.repeat(np.arange(lattice.n_sites), table.shape[1]))
        columns.append(table.ravel())
        index.append(np.full(table.size, k))
    return torch.from_numpy(np.stack([np.concatenate(rows), np.concatenate(columns), np.concatenate(index)]))


class _TransformerModule(torch.nn.Module):
    """The differentiable network; parameters named as in `TransformerModel.parameters()`."""

    def __init__(self, lattice: Lattice, n_J: int, n_layers: int, n_att: int):
        super().__init__()
        n = lattice.n_sites
        self.n_sites = n
        self.register_buffer("attention_adjacency", _shell_adjacencies(lattice, range(0, n_att + 1)))
        self.register_buffer("readout_pairs", _shell_pairs(lattice, range(1, n_J + 1)), persistent=False)
        generator = torch.Generator().manual_seed(INIT_SEED)
        attention = INIT_SCALE * torch.randn(n_layers, 3, n_att + 1, generator=generator, dtype=torch.float64)
        attention[:, 2] = 0.0  # values: the model starts as the linear model
        self.attention = torch.nn.Parameter(attention)
        self.e0 = torch.nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.couplings = torch.nn.Parameter(torch.zeros(n_J, dtype=torch.float64))
        self.biquadratic = torch.nn.Parameter(torch.zeros(n_J, dtype=torch.float64))
        # The 1/√3 of M is folded into the query weights, which saves one pass over [B, N, N].
        self.register_buffer("qkv_scale", torch.tensor([1.0 / math.sqrt(3.0), 1.0, 1.0], dtype=torch.float64))

    def matrices(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Per layer the stacked [3N, N] mixing matrix (Q/√3; K; V), and the read-out matrices [2, N, N]:
        ½ Σ_n J_n A_n and ½ Σ_n K_n A_n."""
        n = self.n_sites
        mixers = [
            torch.einsum("an,nij->aij", w * self.qkv_scale[:, None], self.attention_adjacency).reshape(3 * n, n)
            for w in self.attention
        ]
        rows, columns, shell = self.readout_pairs
        readout = torch.zeros(2, n, n, dtype=self.couplings.dtype)
        for k, weights in enumerate((self.couplings, self.biquadratic)):
            readout[k] = readout[k].index_put((rows, columns), 0.5 * weights[shell], accumulate=True)
        return mixers, readout

    def effective_spins(self, spins: torch.Tensor, mixers: list[torch.Tensor]) -> torch.Tensor:
        n, batch = self.n_sites, spins.shape[0]
        for mixer in mixers:
            qkv = torch.bmm(mixer.expand(batch, -1, -1), spins)  # [B, 3N, 3]
            query, key, value = qkv[:, :n], qkv[:, n : 2 * n], qkv[:, 2 * n :]
            weights = torch.bmm(query, key.transpose(1, 2)).relu_()  # M [B, N, N]
            spins = torch.baddbmm(spins, weights, value)
            spins = spins / torch.linalg.vector_norm(spins, dim=2, keepdim=True)
        return spins

    def energy(self, spins: torch.Tensor, mixers: list[torch.Tensor], readout: torch.Tensor) -> torch.Tensor:
        spins = self.effective_spins(spins, mixers)
        batch = spins.shape[0]
        heisenberg, biquadratic = readout[0], readout[1]
        field = torch.bmm(heisenberg.expand(batch, -1, -1), spins)  # [B, N, 3]
        dots = torch.bmm(spins, spins.transpose(1, 2))  # [B, N, N]: S_i·S_j
        # Elementwise products and per-row reductions: a batched matrix-vector product here does not give
        # the same bits for every batch size (measured from L = 12 on: BLAS blocks a batch of one otherwise).
        pair_sum = (spins * field).sum(dim=(1, 2))
        quad_sum = (dots * dots * biquadratic).sum(dim=(1, 2))
        return self.e0 - pair_sum + quad_sum

    def forward(self, spins: torch.Tensor) -> torch.Tensor:
        mixers, readout = self.matrices()
        return self.energy(spins, mixers, readout)


class TransformerModel:
    """Batched float64 transformer H_eff with the protocol of `slmc_hpc.systems.double_exchange.effective`."""

    kind = "transformer"
    READOUT_PARAMETERS = ("e0", "couplings", "biquadratic")

    def __init__(self, lattice: Lattice, n_J: int, n_layers: int, n_att: int):
        if n_J < 1 or n_layers < 0 or n_att < 0:
            raise ValueError(f"need n_J >= 1, n_layers >= 0, n_att >= 0; got {n_J}, {n_layers}, {n_att}")
        self.lattice, self.n_sites = lattice, lattice.n_sites
        self.n_J, self.n_layers, self.n_att = n_J, n_layers, n_att
        self.module = _TransformerModule(lattice, n_J, n_layers, n_att)
        self._parameters = list(self.module.parameters())  # updated in place only (copy_, optimizer steps)
        self._cache_key: tuple | None = None
        self._cache: tuple | None = None
        #: Linear model over every distance shell, fitted to this H_eff (`fit_proposal`): the cheap
        #: proposal of the nested inner chain (`SLMCSampler(inner_block > 0)`). Not part of H_eff.
        #: An untrained model is H_eff = 0, which the zero proposal matches exactly.
        self.proposal = self.new_proposal()

    # -- inference ------------------------------------------------------------------------------
    def _inference_matrices(self) -> tuple:
        """Mixing and read-out matrices, rebuilt only when a parameter changed (in-place version counters)."""
        key = tuple(p._version for p in self._parameters)
        if key != self._cache_key:
            with torch.inference_mode():
                self._cache = self.module.matrices()
            self._cache_key = key
        return self._cache

    def energy(self, spins: np.ndarray) -> np.ndarray:
        mixers, readout = self._inference_matrices()
        with torch.inference_mode():
            return self.module.energy(torch.from_numpy(np.ascontiguousarray(spins)), mixers, readout).numpy()

    def delta_energy(
        self, spins: np.ndarray, sites: np.ndarray, new_spins: np.ndarray, energy: np.ndarray | None = None
    ) -> np.ndarray:
        """One forward pass on the proposed configurations; `energy` (current H_eff) saves the second."""
        after = np.array(spins, dtype=np.float64, order="C")
        after[np.arange(after.shape[0]), sites] = new_spins
        if energy is None:
            energy = self.energy(spins)
        return self.energy(after) - energy

    def force(self, spins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H_eff [B], ∂H_eff/∂S [B, N, 3]) by autograd through the network, float64 (self-learning HMC)."""
        mixers, readout = self._inference_matrices()
        with torch.enable_grad():
            x = torch.from_numpy(np.array(spins, dtype=np.float64)).requires_grad_(True)
            energy = self.module.energy(x, [m.clone() for m in mixers], readout.clone())  # (inference tensors)
            (gradient,) = torch.autograd.grad(energy.sum(), x)
        return energy.detach().numpy(), gradient.numpy()

    def energy_chunked(self, spins: np.ndarray) -> np.ndarray:
        """`energy` of many configurations, CHUNK at a time (bitwise the same: rows are independent)."""
        if len(spins) == 0:
            return np.zeros(0)
        return np.concatenate([self.energy(spins[k : k + CHUNK]) for k in range(0, len(spins), CHUNK)])

    def new_proposal(self):
        """An unfitted proposal model for this lattice: Heisenberg and biquadratic terms over every distance shell."""
        from slmc_hpc.systems.double_exchange.effective.linear import LinearModel

        return LinearModel(self.lattice, self.lattice.n_distance_shells, biquadratic=True)

    def fit_proposal(
        self, spins: np.ndarray, comm=None, energy: np.ndarray | None = None, features: np.ndarray | None = None
    ) -> float:
        """Fit the proposal model (Heisenberg couplings over all distance shells) to this H_eff on `spins`.

        The nested inner chain moves under the proposal and corrects every sub-chain with H_eff, so
        the closer the fit, the more sub-chains survive; exactness never depends on it. The normal
        equations are summed over the ranks of `comm`, so every rank gets the same couplings.
        `energy` (H_eff of `spins`) and `features` (the proposal's) save their passes where the
        caller has them. Returns the global mean of ((H_eff - H_proposal)/N)².
        """
        from slmc_hpc.core.learning import fit_linear

        proposal = self.new_proposal()
        targets = self.energy_chunked(spins) if energy is None else energy
        loss = fit_linear(proposal, spins, targets, comm=comm, features=features, scale=self.n_sites)
        self.proposal = proposal
        return loss

    def effective_spins(self, spins: np.ndarray) -> np.ndarray:
        """S^(L) [B, N, 3] (equivariant under global O(3) and lattice translations)."""
        mixers, _ = self._inference_matrices()
        with torch.inference_mode():
            return self.module.effective_spins(torch.from_numpy(np.ascontiguousarray(spins)), mixers).numpy()

    def features(self, spins: np.ndarray) -> np.ndarray:
        """Linear-regression features of the read-out on the effective spins (for fit_linear)."""
        from slmc_hpc.systems.double_exchange.effective.linear import shell_features

        tables = [self.lattice.neighbors(n) for n in range(1, self.n_J + 1)]
        return shell_features(self.effective_spins(spins), tables, biquadratic=True)

    # -- parameters -----------------------------------------------------------------------------
    #: Trained by gradient steps (`Trainer`); the read-out e0, couplings, biquadratic is solved exactly (`fit_linear`).
    GRADIENT_PARAMETERS = ("attention",)

    #: Optional when reading: the proposal is stored once `fit_proposal` ran (checkpoint, /model), and
    #: models written before the biquadratic read-out existed have none (K = 0 is their H_eff).
    OPTIONAL_PARAMETERS = ("proposal_e0", "proposal_couplings", "proposal_biquadratic", "biquadratic")

    def parameters(self) -> dict[str, np.ndarray]:
        """The network's parameters, plus the fitted proposal model's as `proposal_<name>`."""
        parameters = {name: p.detach().numpy().copy() for name, p in self.module.named_parameters()}
        if self.proposal is not None:
            parameters.update({f"proposal_{name}": value for name, value in self.proposal.parameters().items()})
        return parameters

    def set_parameters(self, parameters: dict[str, np.ndarray]) -> None:
        """Every network parameter must be given; the proposal only if present (and made for this lattice)."""
        with torch.no_grad():
            for name, p in self.module.named_parameters():
                value = parameters.get(name, np.zeros(p.shape)) if name == "biquadratic" else parameters[name]
                p.copy_(torch.as_tensor(np.asarray(value, dtype=np.float64)).reshape(p.shape))
        if "proposal_couplings" in parameters:
            couplings = np.asarray(parameters["proposal_couplings"], dtype=np.float64)
            if couplings.shape == (self.lattice.n_distance_shells,):
                self.proposal = self.new_proposal()
                quad = parameters.get("proposal_biquadratic", np.zeros_like(couplings))  # older files: K = 0
                self.proposal.set_parameters(
                    {"e0": parameters["proposal_e0"], "couplings": couplings, "biquadratic": quad}
                )
            else:  # fitted on another lattice (effective.load): refit or run without it
                self.proposal = None

    def n_parameters(self) -> int:
        """Parameters of H_eff (the network); the proposal model is a sampling aid, not counted."""
        return sum(p.numel() for p in self.module.parameters())

    def architecture(self) -> dict:
        """What a stored model must match to be reused (`/model` attrs)."""
        return {
            "kind": self.kind,
            "n_J": self.n_J,
            "n_layers": self.n_layers,
            "n_att": self.n_att,
            "lx": self.lattice.lx,
            "ly": self.lattice.ly,
        }

    @property
    def n_readout(self) -> int:
        """Columns of `features` (E_0, J_1..J_nJ, K_1..K_nJ)."""
        return 1 + 2 * self.n_J

    def set_readout(self, e0: float, coefficients: np.ndarray) -> None:
        """The read-out from a linear fit (fit_linear): coefficients [J_1..J_nJ, K_1..K_nJ] of `features`."""
        coefficients = np.asarray(coefficients, dtype=np.float64)
        self.set_parameters(
            {
                **self.parameters(),
                "e0": np.array(e0),
                "couplings": coefficients[: self.n_J],
                "biquadratic": coefficients[self.n_J : 2 * self.n_J],
            }
        )

    def torch_module(self) -> torch.nn.Module:
        """The live network (training updates this model in place)."""
        return self.module
