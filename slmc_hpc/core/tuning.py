"""Choosing an update's settings by measurement: expected squared jump distance per wall second.

What is best depends on the lattice, the model and the machine, so it is measured: a candidate runs a
few real steps with the frozen model (exact steps, which double as thermalisation), and is scored by
the expected squared jump distance (ESJD) per step of a few cheap observables, each divided by its
variance over every configuration visited so far, per wall second. ESJD counts rejected steps as zero
jumps, so acceptance and decorrelation enter together, as they do in the effective sample size. The
scores are global over the ranks and broadcast from rank 0, so every rank takes the same choice.
Which candidates, in which order, is the update's business (`Ladder.climb` measures a sequence of them).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from slmc_hpc import parallel
from slmc_hpc.core.chains import ChainState
from slmc_hpc.core.protocols import Stepper


@dataclass
class Trial:
    """One candidate's measurement (global over ranks)."""

    settings: dict[str, float]
    steps: int
    acceptance: float
    seconds_per_step: float
    jumps: np.ndarray  # mean squared jump per step of each tuning observable
    score: float = float("nan")

    def row(self) -> str:
        settings = "  ".join(
            f"{name} {value:5d}" if isinstance(value, int) else f"{name} {value:5.3g}"
            for name, value in self.settings.items()
        )
        return (
            f"{settings}  acceptance {self.acceptance:.3f}  "
            f"{1e3 * self.seconds_per_step:8.1f} ms/step  ESJD/s {self.score:.3g}"
        )


def measure_stepper(
    stepper: Stepper,
    state: ChainState,
    steps: int,
    observe: Callable[[ChainState], np.ndarray],
    settings: dict[str, float],
    comm=None,
) -> tuple[Trial, np.ndarray]:
    """Run `steps` steps; (its Trial without score, the observables visited [steps + 1, B, k]).

    `observe(state)` gives the tuning observables of the current configurations, [B, k].
    """
    visited = [observe(state)]
    accepted, started = 0.0, time.perf_counter()
    for _ in range(steps):
        accepted += float(np.sum(stepper.step(state).accepted))
        visited.append(observe(state))
    seconds = time.perf_counter() - started
    visited = np.array(visited)
    jumps = np.sum(np.diff(visited, axis=0) ** 2, axis=(0, 1))
    local = np.array([accepted, seconds, float(steps * state.batch), float(steps), *jumps])
    total = parallel.broadcast_array(comm, parallel.allreduce_sum(comm, local))
    trial = Trial(
        settings=dict(settings),
        steps=int(steps),
        acceptance=total[0] / total[2],
        seconds_per_step=total[1] / total[3],  # mean over ranks of the wall time per step
        jumps=total[4:] / total[2],
    )
    return trial, visited


class Ladder:
    """Every trial measured so far, and the scores that compare them."""

    def __init__(self, measure: Callable[[dict[str, float]], tuple[Trial, np.ndarray]], comm=None):
        self.measure, self.comm = measure, comm
        self.trials: list[Trial] = []
        self._visited: list[np.ndarray] = []

    def run(self, settings: dict[str, float]) -> Trial:
        trial, seen = self.measure(settings)
        self.trials.append(trial)
        self._visited.append(seen.reshape(-1, seen.shape[-1]))
        return trial

    def best(self, candidates: list[Trial]) -> Trial:
        """Score `candidates` (variances from every configuration visited so far, over all ranks) and pick one."""
        pooled = np.concatenate(self._visited)
        k = pooled.shape[1]
        sums = np.array([len(pooled), *pooled.sum(axis=0), *(pooled**2).sum(axis=0)])
        sums = parallel.broadcast_array(self.comm, parallel.allreduce_sum(self.comm, sums))
        mean = sums[1 : 1 + k] / sums[0]
        variance = np.maximum(sums[1 + k :] / sums[0] - mean**2, 1e-300)
        for trial in candidates:
            trial.score = float(np.mean(trial.jumps / variance) / trial.seconds_per_step)
        return max(candidates, key=lambda t: t.score)

    def climb(self, trials: list[Trial], candidates: Iterable[dict[str, float]]) -> list[Trial]:
        """Measure candidates in order until two in a row score below the best so far (one low score does not
        end it: the measurements are noisy); returns `trials` with the measured ones appended."""
        for settings in candidates:
            trials.append(self.run(settings))
            leader = self.best(trials)
            if len(trials) >= 3 and all(leader is not trial for trial in trials[-2:]):
                break
        return trials
