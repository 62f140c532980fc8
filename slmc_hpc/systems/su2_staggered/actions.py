"""The exact action S(U) = S_g - (Nf/4) log det M_ee, its force, and pbp, by the two evaluators.

`dense`: log det M_ee by a dense Cholesky, the exact force from M_ee^-1, the exact pbp; noise-free, any
n_flavors; O(V^3). `cg`: pseudofermions phi = (D^dag eta)_e drawn with the true operator at the start of
each trajectory (`refresh`) and held fixed through the MD and the test, S = S_g + phi^dag M_ee^-1 phi by
conjugate gradients to a stated residual, pbp from noise vectors; O(V) per CG iteration. n_flavors 0 is
pure gauge for both (pbp = 0 by its definition, (Nf/4) Re Tr D^-1 / V).

Links arrive as numpy complex128 [B, 4, V, 2, 2] (the chains' state) or torch tensors (the MD's field).
"""

from __future__ import annotations

import numpy as np
import torch

from slmc_hpc.core.chains import ChainState
from slmc_hpc.core.memo import ConfigurationMemo
from slmc_hpc.core.protocols import Evaluation
from slmc_hpc.systems.su2_staggered import gauge, staggered
from slmc_hpc.systems.su2_staggered.lattice import Lattice4D

#: CG settings (`evaluator.options` of cg): relative residual of every solve, its iteration cap, and the
#: noise vectors of one pbp estimate.
CG_TOL, CG_MAX_ITER, N_NOISE = 1e-10, 10_000, 4
#: Memory for the dense evaluator's kept Cholesky factors (16 (2 Ve)^2 bytes each: 27 MB at 6^4, 268 MB at 8^4;
#: at least one batch is always kept).
FACTOR_BYTES = 2**30


def as_links(links) -> torch.Tensor:
    """The torch view of links (numpy arrays are shared, not copied)."""
    return links if isinstance(links, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(links))


class GaugeAction:
    """What both evaluators share: the lattice, the couplings and the gauge part."""

    def __init__(self, lattice: Lattice4D, beta: float, mass: float, n_flavors: int):
        self.lattice, self.beta, self.mass, self.n_flavors = lattice, float(beta), float(mass), int(n_flavors)

    def gauge_action(self, links) -> torch.Tensor:
        return gauge.gauge_action(as_links(links), self.lattice, self.beta)

    def action_of(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(rows["action"], dtype=np.float64)

    @staticmethod
    def _evaluation(action: torch.Tensor) -> Evaluation:
        action = action.detach().numpy().astype(np.float64)
        return Evaluation(action, action, {"action": action})


class DenseAction(GaugeAction):
    """The exact action with log det M_ee by Cholesky: one factorisation per configuration, kept (`core.memo`)
    for when the configuration comes back: a trajectory's end is factorised for its last force, then its test,
    its measurement and the next trajectory's first force take the same factor."""

    def __init__(self, lattice: Lattice4D, beta: float, mass: float, n_flavors: int):
        super().__init__(lattice, beta, mass, n_flavors)
        self._factors = ConfigurationMemo(FACTOR_BYTES)

    @property
    def factorisations(self) -> int:
        """Cholesky factorisations done (kept factors not counted)."""
        return self._factors.computed

    def cholesky(self, links: torch.Tensor) -> torch.Tensor:
        """The lower Cholesky factor of M_ee per chain [B, 2 Ve, 2 Ve], computed for configurations not kept."""

        def factorise(indices: np.ndarray) -> list[torch.Tensor]:
            factors = staggered.mee_cholesky(links[torch.from_numpy(indices)], self.lattice, self.mass)
            return [factor.clone() for factor in factors]  # each its own memory: a view would keep the batch

        return torch.stack(self._factors.results(links.detach().numpy(), factorise))

    def evaluate(self, links) -> Evaluation:
        links = as_links(links)
        action = self.gauge_action(links)
        if self.n_flavors:
            chol = self.cholesky(links)
            action = action + staggered.fermion_action_dense(links, self.lattice, self.mass, self.n_flavors, chol)
        return self._evaluation(action)

    def force(self, links) -> torch.Tensor:
        """d_a S [B, 4, V, 3]: the gauge force and the exact fermion force from one Cholesky factor."""
        links = as_links(links)
        force = gauge.gauge_force(links, self.lattice, self.beta)
        if self.n_flavors:
            chol = self.cholesky(links)
            force = force + staggered.fermion_force_dense(links, self.lattice, self.mass, self.n_flavors, chol)
        return force

    def pbp(self, state: ChainState) -> np.ndarray:
        """The exact (Nf/4) Re Tr D^-1 / V per chain."""
        if not self.n_flavors:
            return np.zeros(state.batch)
        links = as_links(state.config)
        return staggered.pbp_dense(links, self.lattice, self.mass, self.n_flavors, self.cholesky(links)).numpy()


class PseudofermionAction(GaugeAction):
    """S = S_g + phi^dag M_ee^-1 phi (Nf = 4) with phi fixed per trajectory; every solve by CG to `tol`.

    `take_iterations()` gives the mean CG iterations per solve of the current trajectory (from its `refresh`).
    """

    def __init__(self, lattice: Lattice4D, beta: float, mass: float, n_flavors: int, **options):
        super().__init__(lattice, beta, mass, n_flavors)
        if n_flavors not in (0, 4):
            raise ValueError(f"pseudofermions by CG serve n_flavors 0 or 4 (2 needs RHMC), got {n_flavors}")
        self.tol = float(options.get("tol", CG_TOL))
        self.max_iter = int(options.get("max_iter", CG_MAX_ITER))
        self.n_noise = int(options.get("n_noise", N_NOISE))
        self.phi: torch.Tensor | None = None
        self._iterations: list[torch.Tensor] = []

    def refresh(self, state: ChainState) -> Evaluation:
        """Draw phi = (D^dag eta)_e with the true operator (eta from each chain's stream); S of the current links.

        A trajectory starts here, so the CG count starts again (it must not depend on what ran before a restart).
        """
        self._iterations = []
        if self.n_flavors:
            self.phi = staggered.draw_pseudofermion(as_links(state.config), self.lattice, self.mass, state.rngs)
        return self.evaluate(state.config)

    def evaluate(self, links) -> Evaluation:
        """S under the pseudofermions of the current trajectory (before the first one: the gauge part alone,
        which no test uses: every trajectory's test compares both ends under its own phi, `refresh`)."""
        links = as_links(links)
        action = self.gauge_action(links)
        if self.n_flavors and self.phi is not None:
            fermion, iterations = staggered.pseudofermion_action(
                links, self.lattice, self.mass, self.phi, self.tol, self.max_iter
            )
            self._iterations.append(iterations)
            action = action + fermion
        return self._evaluation(action)

    def force(self, links) -> torch.Tensor:
        links = as_links(links)
        force = gauge.gauge_force(links, self.lattice, self.beta)
        if self.n_flavors:
            fermion, iterations = staggered.pseudofermion_force(
                links, self.lattice, self.mass, self.phi, self.tol, self.max_iter
            )
            self._iterations.append(iterations)
            force = force + fermion
        return force

    def count_iterations(self, iterations: torch.Tensor) -> None:
        """CG iterations per chain of a solve made for this trajectory elsewhere (an effective action's force)."""
        self._iterations.append(iterations)

    def take_iterations(self) -> dict[str, np.ndarray]:
        """Mean CG iterations per solve per chain since the trajectory began (none without fermions)."""
        if not self._iterations:
            return {}
        mean = torch.stack(self._iterations).to(torch.float64).mean(dim=0).numpy()
        self._iterations = []
        return {"cg_iterations": mean}

    def pbp(self, state: ChainState) -> np.ndarray:
        """An unbiased noise estimate per chain: the mean of `n_noise` complex Z2 vectors (from the chains' streams)."""
        if not self.n_flavors:
            return np.zeros(state.batch)
        estimates = staggered.pbp_noise(
            as_links(state.config),
            self.lattice,
            self.mass,
            self.n_flavors,
            state.rngs,
            self.n_noise,
            tol=self.tol,
            max_iter=self.max_iter,
        )
        return estimates.mean(dim=1).numpy()
