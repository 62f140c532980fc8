"""Exact local Monte Carlo: single-site Metropolis with one exact diagonalisation per proposal.

The baseline every speed-up is measured against (DESIGN §2): O(N^3) per proposal, O(N^4) per sweep.
"""

from __future__ import annotations

import time

import numpy as np

from slmc_hpc.samplers.chains import ChainState, StepInfo, draw_proposals, metropolis


class ExactLocalSampler:
    """One sweep = N single-site proposals of fresh uniform directions, batched over the chains."""

    def __init__(self, evaluator):
        self.evaluator = evaluator
        self.model = evaluator.model

    def sweep(self, state: ChainState) -> StepInfo:
        n_sites, temperature = self.model.n_sites, self.model.T
        sites, dirs, uniforms = draw_proposals(state.rngs, n_sites, n_sites)
        rows = np.arange(state.batch)
        accepted = np.zeros(state.batch)
        start = time.perf_counter()
        for k in range(n_sites):
            proposal = state.spins.copy()
            proposal[rows, sites[:, k]] = dirs[:, k]
            omega, eigenvalues = self.evaluator.omega(proposal)
            accept = metropolis(-(omega - state.omega) / temperature, uniforms[:, k])
            state.spins[accept] = proposal[accept]
            state.omega[accept] = omega[accept]
            state.eigenvalues[accept] = eigenvalues[accept]
            accepted += accept
        return StepInfo(
            accepted=accepted / n_sites,
            proposed_spins=state.spins.copy(),
            proposed_omega=state.omega.copy(),
            timings={"exact": time.perf_counter() - start},
        )
