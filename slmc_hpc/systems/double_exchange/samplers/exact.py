"""Exact local Monte Carlo: single-site Metropolis with one exact diagonalisation per proposal.

The baseline every speed-up is measured against: O(N^3) per proposal, O(N^4) per sweep. Each
proposal (a fresh uniform direction at one site) is symmetric, so its test is the outer test with
no correction.
"""

from __future__ import annotations

import time

import numpy as np

from slmc_hpc.core.chains import ChainState, StepInfo, exact_test


def draw_proposals(rngs: list[np.random.Generator], n_sites: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per chain, in this order: n sites, n uniform directions, n uniforms -> [B, n], [B, n, 3], [B, n].

    Drawn per chain from its own stream, so a chain's proposals do not depend on its batch.
    """
    sites, dirs, uniforms = [], [], []
    for rng in rngs:
        sites.append(rng.integers(0, n_sites, n))
        d = rng.standard_normal((n, 3))
        dirs.append(d / np.linalg.norm(d, axis=-1, keepdims=True))
        uniforms.append(rng.random(n))
    return np.stack(sites), np.stack(dirs), np.stack(uniforms)


class ExactLocalSweep:
    """One sweep = N single-site proposals of fresh uniform directions, batched over the chains."""

    def __init__(self, action):
        self.action = action
        self.model = action.model

    def step(self, state: ChainState) -> StepInfo:
        n_sites = self.model.n_sites
        sites, dirs, uniforms = draw_proposals(state.rngs, n_sites, n_sites)
        rows = np.arange(state.batch)
        accepted = np.zeros(state.batch)
        start = time.perf_counter()
        for k in range(n_sites):
            proposal = state.config.copy()
            proposal[rows, sites[:, k]] = dirs[:, k]
            evaluation = self.action.evaluate(proposal)
            accept = exact_test(evaluation.action, state.action, 0.0, uniforms[:, k])
            state.take(accept, proposal, evaluation)
            accepted += accept
        return StepInfo(
            accepted=accepted / n_sites,
            proposed=state.config.copy(),
            proposed_target=state.rows["omega"].copy(),
            timings={"exact": time.perf_counter() - start},
        )
