"""Sizing the SLMC inner chain by measurement (`sampler.inner_sweeps`, `sampler.inner_block`: auto).

A longer inner chain decorrelates a proposal further from the chain's state but drifts further
from exp(-Ω/T), so the outer acceptance falls; its cost grows with the lattice. So it is measured
(`core.tuning`): each candidate runs a few outer steps of real SLMC with the frozen H_eff, scored by
the ESJD of Ω/N and ms per wall second, decided on rank 0's broadcast numbers, and frozen.
"""

from __future__ import annotations

import numpy as np

from slmc_hpc.core.chains import ChainState
from slmc_hpc.core.tuning import Ladder, Trial, measure_stepper
from slmc_hpc.systems.double_exchange.samplers.slmc import inner_mode, slmc_chain

#: Candidate inner sweeps (N proposals each) per outer step, measured in this order.
CANDIDATE_SWEEPS = (1, 2, 4, 8, 16, 32)
#: Candidate sub-chain lengths of the nested inner chain, as fractions of N (then the whole chain).
CANDIDATE_BLOCK_FRACTIONS = (0.25, 0.5, 1.0, 2.0)
#: Outer steps per candidate.
STEPS_PER_CANDIDATE = 8


def measure_candidate(
    action, effective, state: ChainState, inner_sweeps: int, inner_block: int, steps: int, comm=None
) -> tuple[Trial, np.ndarray]:
    """Run `steps` outer steps with one inner chain; (its Trial without score, observables visited [steps+1, B, 2])."""
    stepper = slmc_chain(action, effective, inner_sweeps, inner_block)
    observe = _observer(action)
    settings = {"inner_sweeps": int(inner_sweeps), "inner_block": int(inner_block)}
    return measure_stepper(stepper, state, steps, observe, settings, comm)


def _observer(action):
    model = action.model

    def observe(state: ChainState) -> np.ndarray:
        return np.stack([state.rows["omega"] / model.n_sites, model.spin_observables(state.config)["ms"]], axis=1)

    return observe


def tune_inner_chain(
    action,
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
    n_sites = action.model.n_sites
    nested = inner_mode(effective, 1) == "nested"
    block = int(inner_block) if inner_block != "auto" else 0

    def ladder_block(sweeps: int) -> int:  # the whole chain as one sub-chain, where the block is still open
        return sweeps * n_sites if nested and inner_block == "auto" else block

    def measure(settings: dict[str, int]) -> tuple[Trial, np.ndarray]:
        return measure_candidate(
            action, effective, state, settings["inner_sweeps"], settings["inner_block"], steps, comm
        )

    ladder = Ladder(measure, comm)
    sweeps_options = CANDIDATE_SWEEPS if inner_sweeps == "auto" else (int(inner_sweeps),)
    first: list[Trial] = []
    if len(sweeps_options) > 1 or inner_block == "auto":
        candidates = [{"inner_sweeps": s, "inner_block": ladder_block(s)} for s in sweeps_options]
        first = ladder.climb([], candidates)
    chosen_sweeps = ladder.best(first).settings["inner_sweeps"] if len(sweeps_options) > 1 else sweeps_options[0]
    if nested and inner_block == "auto":
        # From the whole chain down to shorter sub-chains, which cost more forward passes per step.
        moves = chosen_sweeps * n_sites
        lengths = sorted({min(moves, max(1, round(f * n_sites))) for f in CANDIDATE_BLOCK_FRACTIONS} - {moves})
        whole = [t for t in first if t.settings == {"inner_sweeps": chosen_sweeps, "inner_block": moves}]
        second = ladder.climb(whole, [{"inner_sweeps": chosen_sweeps, "inner_block": m} for m in reversed(lengths)])
        block = ladder.best(second).settings["inner_block"]
    elif first:
        ladder.best(first)
    if report is not None:
        for trial in ladder.trials:
            report(trial)
    return chosen_sweeps, block, ladder.trials


#: Self-learning HMC: candidate trajectory lengths (measured in this order at STEP_SIZE), then candidate step
#: counts at the chosen length, from STEP_SIZE's down to coarser steps (each halving halves the forces).
CANDIDATE_LENGTHS = (0.25, 0.5, 1.0, 2.0, 4.0)
STEP_SIZE = 0.1
STEPS_PER_TRAJECTORY_CANDIDATE = 8


def tune_trajectory(
    make_stepper,
    action,
    state: ChainState,
    trajectory_length,
    md_steps,
    comm=None,
    steps: int = STEPS_PER_TRAJECTORY_CANDIDATE,
    report=None,
) -> tuple[float, int, list[Trial]]:
    """The (trajectory_length, md_steps) of self-learning HMC with the most ESJD of Ω/N and ms per second.

    `make_stepper(length, n)` is the SLHMC with the frozen H_eff. Lengths ascend at a fine step (STEP_SIZE)
    until two in a row score below the best (a longer trajectory moves further but drifts from exp(-Ω/T)),
    then the step count descends from there by halving (cheaper trajectories, lower acceptance) by the same
    rule. Explicit values are kept as given.
    """
    observe = _observer(action)

    def measure(settings: dict) -> tuple[Trial, np.ndarray]:
        stepper = make_stepper(settings["trajectory_length"], settings["md_steps"])
        return measure_stepper(stepper, state, steps, observe, settings, comm)

    def candidate(length: float, n: int | None = None) -> dict:
        n = n if n is not None else max(1, int(np.ceil(length / STEP_SIZE - 1e-9)))
        return {"trajectory_length": float(length), "md_steps": int(n)}

    ladder = Ladder(measure, comm)
    lengths = CANDIDATE_LENGTHS if trajectory_length == "auto" else (float(trajectory_length),)
    fixed_steps = None if md_steps == "auto" else int(md_steps)
    first = ladder.climb([], [candidate(length, fixed_steps) for length in lengths])
    chosen = ladder.best(first)
    length, n = chosen.settings["trajectory_length"], chosen.settings["md_steps"]
    if md_steps == "auto":
        coarser = [n // k for k in (2, 4, 8) if n // k >= 1]
        second = ladder.climb([chosen], [candidate(length, m) for m in coarser])
        n = ladder.best(second).settings["md_steps"]
    if report is not None:
        for trial in ladder.trials:
            report(trial)
    return length, n, ladder.trials
