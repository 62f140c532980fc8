"""Self-learning Monte Carlo, cumulative update: the inner chain under H_eff as an update of the outer test.

An inner chain under H_eff moves C to C'; the update returns C' with the correction
c = (H_eff(C') - H_eff(C))/T, so the framework's outer test accepts it with
min(1, exp(-[(Ω(C') - H_eff(C')) - (Ω(C) - H_eff(C))]/T)). Exact for any deterministic H_eff whose
parameters stay fixed, because the inner chain satisfies detailed balance for exp(-H_eff/T) and the
correction evaluates the very same float64 H_eff function at both ends.

The inner chain is `inner_sweeps * N` single-site proposals, run in one of three ways:

- plain: every proposal is evaluated with H_eff (`delta_energy`), the textbook SLMC;
- compiled: a model with a local ΔH (`metropolis_chain`, the linear model) runs the whole chain in
  compiled code, ~0.1 µs a move;
- nested (`inner_block = m > 0`, a model with a fitted `proposal`): the proposals run in sub-chains
  of m moves under the cheap linear proposal model H_p, and each sub-chain X -> Y is accepted with
  min(1, exp(-[(H_eff(Y) - H_p(Y)) - (H_eff(X) - H_p(X))]/T)). That is the SLMC test again, one
  level down: each sub-chain satisfies detailed balance for exp(-H_p/T), so the corrected chain
  satisfies it for exp(-H_eff/T), with one H_eff evaluation per m moves instead of one per move.
"""

from __future__ import annotations

import time

import numpy as np

from slmc_hpc.core.chains import ChainState, OuterChain, Proposal, metropolis
from slmc_hpc.core.protocols import CompiledChain, NestedProposal
from slmc_hpc.systems.double_exchange.samplers.exact import draw_proposals


def inner_mode(effective, inner_block: int) -> str:
    """'compiled', 'nested' or 'plain' (see the module docstring)."""
    if isinstance(effective, CompiledChain):
        return "compiled"
    if inner_block > 0 and isinstance(effective, NestedProposal) and effective.proposal is not None:
        return "nested"
    return "plain"


def slmc_chain(action, effective, inner_sweeps: int = 1, inner_block: int = 0) -> OuterChain:
    """SLMC: the inner chain's update followed by the framework's exact test."""
    return OuterChain(action, SLMCUpdate(action.model, effective, inner_sweeps, inner_block))


class SLMCUpdate:
    """An inner chain of `inner_sweeps * N` proposals under H_eff from each chain's configuration."""

    def __init__(self, model, effective, inner_sweeps: int = 1, inner_block: int = 0):
        self.effective = effective
        self.model = model
        self.inner_sweeps = int(inner_sweeps)
        self.inner_block = int(inner_block)

    @property
    def mode(self) -> str:
        return inner_mode(self.effective, self.inner_block)

    def n_blocks(self, n_moves: int) -> int:
        """Sub-chains per outer step in nested mode (the last one may be shorter), else 0."""
        return -(-n_moves // self.inner_block) if self.mode == "nested" else 0

    def inner_chain(self, spins: np.ndarray, energy: np.ndarray, sites, dirs, uniforms) -> np.ndarray:
        """Plain Metropolis under exp(-H_eff/T) from `spins` with energies `energy` (both updated in place).

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

    def nested_chain(
        self, spins: np.ndarray, energy: np.ndarray, sites, dirs, uniforms, block_uniforms
    ) -> tuple[np.ndarray, np.ndarray]:
        """Sub-chains of `inner_block` moves under the proposal model, each corrected with H_eff.

        `spins` and `energy` (H_eff of `spins`, a full evaluation) are updated in place.
        Returns (fraction of the moves that were kept [B], fraction of sub-chains accepted [B]).
        """
        proposal, temperature = self.effective.proposal, self.model.T
        n_moves = sites.shape[1]
        kept, blocks_accepted = np.zeros(spins.shape[0]), np.zeros(spins.shape[0])
        for k in range(block_uniforms.shape[1]):
            trial = spins.copy()
            start, stop = k * self.inner_block, min((k + 1) * self.inner_block, n_moves)
            proposal_delta, moves = proposal.metropolis_chain(trial, sites, dirs, uniforms, temperature, start, stop)
            trial_energy = self.effective.energy(trial)
            accept = metropolis(-((trial_energy - energy) - proposal_delta) / temperature, block_uniforms[:, k])
            spins[accept] = trial[accept]
            energy[accept] = trial_energy[accept]
            kept += np.where(accept, moves, 0.0)
            blocks_accepted += accept
        return kept / n_moves, blocks_accepted / block_uniforms.shape[1]

    def propose(self, state: ChainState) -> Proposal:
        """Draws, per chain in this order: sites, directions, uniforms of the inner moves, the sub-chains'
        uniforms (nested), the outer test's uniform; then runs the inner chain on a copy."""
        mode, n = self.mode, self.inner_sweeps * self.model.n_sites
        sites, dirs, uniforms = draw_proposals(state.rngs, self.model.n_sites, n)
        n_blocks = self.n_blocks(n)
        block_uniforms = np.stack([rng.random(n_blocks) for rng in state.rngs]) if n_blocks else None
        outer_uniforms = np.array([rng.random() for rng in state.rngs])

        start = time.perf_counter()
        heff_before = self.effective.energy(state.config)
        proposal = state.config.copy()
        block_acceptance = None
        # H_eff at both ends is a full evaluation of the same function: the outer test must not rely
        # on accumulated differences (the nested chain evaluates every accepted sub-chain end in full).
        if mode == "compiled":
            _, moves = self.effective.metropolis_chain(proposal, sites, dirs, uniforms, self.model.T)
            inner_acceptance, heff_after = moves / n, self.effective.energy(proposal)
        elif mode == "nested":
            heff_after = heff_before.copy()
            inner_acceptance, block_acceptance = self.nested_chain(
                proposal, heff_after, sites, dirs, uniforms, block_uniforms
            )
        else:
            inner_acceptance = self.inner_chain(proposal, heff_before.copy(), sites, dirs, uniforms)
            heff_after = self.effective.energy(proposal)
        inner_done = time.perf_counter()
        extras = {"inner_acceptance": inner_acceptance}
        if block_acceptance is not None:
            extras["block_acceptance"] = block_acceptance
        return Proposal(
            config=proposal,
            correction=(heff_after - heff_before) / self.model.T,
            uniforms=outer_uniforms,
            timings={"inner": inner_done - start},
            extras=extras,
        )
