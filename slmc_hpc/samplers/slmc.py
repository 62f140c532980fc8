"""Self-learning Monte Carlo, cumulative update (DESIGN §2).

An inner chain of single-site Metropolis proposals under H_eff moves C to C'; the outer test accepts
C' with min(1, exp(-[(Ω(C') - H_eff(C')) - (Ω(C) - H_eff(C))]/T)). Exact for any deterministic H_eff
whose parameters stay fixed, because the inner chain satisfies detailed balance for exp(-H_eff/T) and
the outer test uses the very same float64 H_eff function.
"""

from __future__ import annotations

import time

import numpy as np

from slmc_hpc.samplers.chains import ChainState, StepInfo, draw_proposals, metropolis


class SLMCSampler:
    """One outer step: `inner_sweeps * N` inner proposals under H_eff, one exact evaluation per chain."""

    def __init__(self, evaluator, effective, inner_sweeps: int = 1):
        self.evaluator = evaluator
        self.effective = effective
        self.model = evaluator.model
        self.inner_sweeps = int(inner_sweeps)

    def inner_chain(self, spins: np.ndarray, energy: np.ndarray, sites, dirs, uniforms) -> np.ndarray:
        """Metropolis under exp(-H_eff/T) from `spins` with energies `energy` (both updated in place).

        Returns the inner acceptance per chain.
        """
        temperature = self.model.T
        rows = np.arange(spins.shape[0])
        accepted = np.zeros(spins.shape[0])
        for k in range(sites.shape[1]):
            delta = self.effective.delta_energy(spins, sites[:, k], dirs[:, k], energy=energy)
            accept = metropolis(-delta / temperature, uniforms[:, k])
            moved = rows[accept]
            spins[moved, sites[moved, k]] = dirs[moved, k]
            energy[accept] += delta[accept]
            accepted += accept
        return accepted / sites.shape[1]

    def step(self, state: ChainState) -> StepInfo:
        n = self.inner_sweeps * self.model.n_sites
        sites, dirs, uniforms = draw_proposals(state.rngs, self.model.n_sites, n)
        outer_uniforms = np.array([rng.random() for rng in state.rngs])

        start = time.perf_counter()
        heff_before = self.effective.energy(state.spins)
        proposal = state.spins.copy()
        inner_acceptance = self.inner_chain(proposal, heff_before.copy(), sites, dirs, uniforms)
        # Full evaluations of the same function at both ends: the outer test must not rely on
        # the inner chain's accumulated differences.
        heff_after = self.effective.energy(proposal)
        inner_done = time.perf_counter()

        omega, eigenvalues = self.evaluator.omega(proposal)
        log_ratio = -((omega - heff_after) - (state.omega - heff_before)) / self.model.T
        accept = metropolis(log_ratio, outer_uniforms)
        state.spins[accept] = proposal[accept]
        state.omega[accept] = omega[accept]
        state.eigenvalues[accept] = eigenvalues[accept]
        return StepInfo(
            accepted=accept.astype(np.float64),
            proposed_spins=proposal,
            proposed_omega=np.asarray(omega, dtype=np.float64),
            timings={"inner": inner_done - start, "exact": time.perf_counter() - inner_done},
            inner_acceptance=inner_acceptance,
        )
