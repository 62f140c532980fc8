"""Sizing the SLMC inner chain by measurement (`sampler.inner_sweeps`, `sampler.inner_block`: auto).

A longer inner chain decorrelates a proposal further from the chain's state but drifts further
from exp(-Ω/T), so the outer acceptance falls; its cost grows with the lattice. What is best
depends on the lattice, the model and the machine, so it is measured: every candidate runs a few
outer steps of real SLMC with the frozen H_eff (exact steps, which double as thermalization),
scored by the expected squared jump distance (ESJD) of Ω/N and ms per outer step, each divided by
its variance, per wall second. ESJD counts rejected steps as zero jumps, so acceptance and
decorrelation enter together, as they do in the effective sample size. The choice is made once,
before production, on rank 0's numbers (broadcast, so every rank takes the same), and frozen.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from slmc_hpc import parallel
from slmc_hpc.samplers.chains import ChainState
from slmc_hpc.samplers.slmc import SLMCSampler

#: Candidate inner sweeps (N proposals each) per outer step, measured in this order.
CANDIDATE_SWEEPS = (1, 2, 4, 8, 16, 32)
#: Candidate sub-chain lengths of the nested inner chain, as fractions of N (then the whole chain).
CANDIDATE_BLOCK_FRACTIONS = (0.25, 0.5, 1.0, 2.0)
#: Outer steps per candidate.
STEPS_PER_CANDIDATE = 8


@dataclass
class Trial:
    """One candidate's measurement (global over ranks)."""

    inner_sweeps: int
    inner_block: int
    steps: int
    acceptance: float
    seconds_per_step: float
    jumps: np.ndarray  # [2] mean squared jump of Ω/N and ms per outer step
    score: float = float("nan")

    def row(self) -> str:
        return (
            f"inner_sweeps {self.inner_sweeps:3d}  inner_block {self.inner_block:5d}  "
            f"acceptance {self.acceptance:.3f}  "
            f"{1e3 * self.seconds_per_step:8.1f} ms/step  ESJD/s {self.score:.3g}"
        )


def _observables(evaluator, state: ChainState) -> np.ndarray:
    """[B, 2]: Ω/N and ms of the chains' current configurations."""
    model = evaluator.model
    return np.stack([state.omega / model.n_sites, model.spin_observables(state.spins)["ms"]], axis=1)


def measure_candidate(
    evaluator, effective, state: ChainState, inner_sweeps: int, inner_block: int, steps: int, comm=None
) -> tuple[Trial, np.ndarray]:
    """Run `steps` outer steps with one inner chain; (its Trial without score, observables visited [steps+1, B, 2])."""
    sampler = SLMCSampler(evaluator, effective, inner_sweeps, inner_block)
    visited = [_observables(evaluator, state)]
    accepted, started = 0.0, time.perf_counter()
    for _ in range(steps):
        accepted += float(np.sum(sampler.step(state).accepted))
        visited.append(_observables(evaluator, state))
    seconds = time.perf_counter() - started
    visited = np.array(visited)
    jumps = np.sum(np.diff(visited, axis=0) ** 2, axis=(0, 1))
    local = np.array([accepted, seconds, float(steps * state.batch), float(steps), *jumps])
    total = parallel.broadcast_array(comm, parallel.allreduce_sum(comm, local))
    trial = Trial(
        inner_sweeps=int(inner_sweeps),
        inner_block=int(inner_block),
        steps=int(steps),
        acceptance=total[0] / total[2],
        seconds_per_step=total[1] / total[3],  # mean over ranks of the wall time per outer step
        jumps=total[4:] / total[2],
    )
    return trial, visited


def tune_inner_chain(
    evaluator,
    effective,
    state: ChainState,
    inner_sweeps: int | str,
    inner_block: int | str,
    comm=None,
    steps: int = STEPS_PER_CANDIDATE,
    report=None,
) -> tuple[int, int, list[Trial]]:
    """The (inner_sweeps, inner_block) with the most ESJD per second; explicit values are kept as given.

    Sweeps are chosen first, then the sub-chain length for the chosen sweeps. For the nested chain
    with `inner_block: auto` the sweeps are measured as one sub-chain (one forward pass per outer
    step), so a long chain is not charged for the short sub-chains it may not need (at L = 16, with
    sub-chains of N/2, 16 sweeps cost 8x the forward passes of 2). The sweeps are measured in
    ascending order until two in a row score below the best so far: the ESJD saturates while the cost
    grows with the sweeps, and 8 outer steps are a noisy measure, so one low score does not end it.
    The sub-chain lengths are measured the same way, from the whole chain down (2N, N, N/2, N/4):
    each halving doubles the forward passes per step (at L = 16, 32 sweeps in sub-chains of N/4
    took 1.1 s per outer step against 0.33 s as one chain).
    `report(trial)` is called on every measurement.
    """
    n_sites = evaluator.model.n_sites
    nested = SLMCSampler(evaluator, effective, 1, 1).mode == "nested"
    block = int(inner_block) if inner_block != "auto" else 0

    def ladder_block(sweeps: int) -> int:  # the whole chain as one sub-chain, where the block is still open
        return sweeps * n_sites if nested and inner_block == "auto" else block

    sweeps_options = CANDIDATE_SWEEPS if inner_sweeps == "auto" else (int(inner_sweeps),)
    trials: list[Trial] = []
    visited: list[np.ndarray] = []

    def run(sweeps: int, block_length: int) -> Trial:
        trial, seen = measure_candidate(evaluator, effective, state, sweeps, block_length, steps, comm)
        trials.append(trial)
        visited.append(seen.reshape(-1, 2))
        return trial

    def best(candidates: list[Trial]) -> Trial:
        # Variances from every configuration visited so far, over all ranks (the same on every rank).
        pooled = np.concatenate(visited)
        sums = np.array([len(pooled), *pooled.sum(axis=0), *(pooled**2).sum(axis=0)])
        sums = parallel.broadcast_array(comm, parallel.allreduce_sum(comm, sums))
        mean = sums[1:3] / sums[0]
        variance = np.maximum(sums[3:5] / sums[0] - mean**2, 1e-300)
        for trial in candidates:
            trial.score = float(np.mean(trial.jumps / variance) / trial.seconds_per_step)
        return max(candidates, key=lambda t: t.score)

    def ladder(trials_so_far: list[Trial], candidates) -> list[Trial]:
        """Measure (sweeps, block) candidates in order until two in a row score below the best so far."""
        for sweeps, block_length in candidates:
            trials_so_far.append(run(sweeps, block_length))
            leader = best(trials_so_far)
            if len(trials_so_far) >= 3 and all(leader is not trial for trial in trials_so_far[-2:]):
                break
        return trials_so_far

    first: list[Trial] = []
    if len(sweeps_options) > 1 or inner_block == "auto":
        first = ladder([], [(sweeps, ladder_block(sweeps)) for sweeps in sweeps_options])
    chosen_sweeps = best(first).inner_sweeps if len(sweeps_options) > 1 else sweeps_options[0]
    if nested and inner_block == "auto":
        # From the whole chain down to shorter sub-chains, which cost more forward passes per step.
        moves = chosen_sweeps * n_sites
        lengths = sorted({min(moves, max(1, round(f * n_sites))) for f in CANDIDATE_BLOCK_FRACTIONS} - {moves})
        whole = [t for t in first if t.inner_sweeps == chosen_sweeps and t.inner_block == moves]
        second = ladder(whole, [(chosen_sweeps, m) for m in reversed(lengths)])
        block = best(second).inner_block
    elif first:
        best(first)
    if report is not None:
        for trial in trials:
            report(trial)
    return chosen_sweeps, block, trials
