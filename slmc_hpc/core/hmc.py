"""Hybrid Monte Carlo as an update of the one outer test: a trajectory proposes, the exact action decides.

An `HMCUpdate` draws momenta, integrates Hamilton's equations with a force (the exact action's for exact
HMC, an effective action's for self-learning HMC) and returns the end of the trajectory with the
correction c = -(K(p') - K(p)); the outer test then accepts with min(1, exp(-(S(x') - S(x)) + c)), S the
exact action. The integrator is reversible and area-preserving whatever the force, so the chain is exact
for any deterministic force with frozen parameters. What is specific to a configuration space (momenta,
kinetic energy, the field update on a group manifold or spheres) is its `Dynamics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from slmc_hpc.core.chains import ChainState, Proposal
from slmc_hpc.core.integrators import integrate
from slmc_hpc.core.protocols import Evaluation


class Dynamics(Protocol):
    """Molecular dynamics on one configuration space.

    `field(configs)` gives the working representation of the MD (a copy); `configs(field)` turns it back
    into the state's. `draw_momenta(rngs, field)` draws each chain's momenta from its own stream (in the
    tangent space at `field`); `kinetic(p)` is K per chain [B] (float64); `drift(field, p, eps)` moves the
    field along p for a time eps and returns (field, momenta) (on a curved space the momenta are carried
    along); `kick(p, force, eps)` is p <- p - eps * force, with the force already in the tangent space.
    """

    def field(self, configs: np.ndarray) -> Any: ...

    def configs(self, field: Any) -> np.ndarray: ...

    def draw_momenta(self, rngs: list[np.random.Generator], field: Any) -> Any: ...

    def kinetic(self, momenta: Any) -> np.ndarray: ...

    def drift(self, field: Any, momenta: Any, eps: float) -> tuple[Any, Any]: ...

    def kick(self, momenta: Any, force: Any, eps: float) -> Any: ...


class HMCUpdate:
    """One trajectory of `n_steps` steps of length `trajectory_length / n_steps` per chain.

    `force(field)` is the MD force in the dynamics' representation. `refresh(state)`, where given, runs
    after the momenta are drawn and returns the current configurations' evaluation under what it drew
    (pseudofermions held fixed through the trajectory and the test); otherwise the state's action is used.
    Random numbers per chain, in this order: the momenta, what `refresh` draws, the outer test's uniform.
    `diagnostics()` gives per-chain values of the force's own to record with the step (CG iterations).
    """

    def __init__(
        self,
        dynamics: Dynamics,
        force: Callable[[Any], Any],
        integrator: str,
        n_steps: int,
        trajectory_length: float,
        refresh: Callable[[ChainState], Evaluation] | None = None,
        diagnostics: Callable[[], dict[str, np.ndarray]] | None = None,
    ):
        self.dynamics, self.force, self.integrator = dynamics, force, integrator
        self.n_steps, self.trajectory_length = int(n_steps), float(trajectory_length)
        self.refresh, self.diagnostics = refresh, diagnostics

    @property
    def step_size(self) -> float:
        return self.trajectory_length / self.n_steps

    def propose(self, state: ChainState) -> Proposal:
        d = self.dynamics
        field = d.field(state.config)
        momenta = d.draw_momenta(state.rngs, field)
        before = self.refresh(state) if self.refresh is not None else None
        uniforms = np.array([rng.random() for rng in state.rngs])
        started = time.perf_counter()
        kinetic_before = d.kinetic(momenta)

        def kick(eps: float) -> None:
            nonlocal momenta
            momenta = d.kick(momenta, self.force(field), eps)

        def drift(eps: float) -> None:
            nonlocal field, momenta
            field, momenta = d.drift(field, momenta, eps)

        integrate(self.integrator, self.n_steps, self.step_size, kick, drift)
        correction = -(d.kinetic(momenta) - kinetic_before)
        samples = self.diagnostics() if self.diagnostics is not None else {}
        return Proposal(
            config=d.configs(field),
            correction=correction,
            uniforms=uniforms,
            before=before,
            timings={"inner": time.perf_counter() - started},
            samples=samples,
        )


#: md_steps auto: trajectories per chain and round, and the rounds of `tune_md_steps`.
TRAJECTORIES_PER_ROUND = 4
MIN_ROUNDS, MAX_ROUNDS = 3, 10
#: With an effective action (max_steps given): more steps that leave more than this share of <dH> are not taken,
#: and fewer steps are taken while <dH> stays under FLOOR_MARGIN times the least measured.
FLOOR_RATIO, FLOOR_MARGIN = 0.5, 1.5


def target_energy_violation(acceptance: float) -> float:
    """The mean dH whose trajectories are accepted with probability `acceptance`: (2 erfcinv(a))^2."""
    from scipy.special import erfcinv

    return float((2.0 * erfcinv(acceptance)) ** 2)


def _tuning_round(stepper, state: ChainState, comm) -> tuple[float, float]:
    """TRAJECTORIES_PER_ROUND trajectories of every chain: (acceptance, <dH>), over all ranks (rank 0's, broadcast)."""
    from slmc_hpc import parallel

    squares, accepted, count = 0.0, 0.0, 0
    for _ in range(TRAJECTORIES_PER_ROUND):
        dh = stepper.step(state).samples["dH"]
        squares += float(np.sum(dh * dh))
        accepted += float(np.sum(np.minimum(1.0, np.exp(-dh))))
        count += dh.size
    total = parallel.allreduce_sum(comm, np.array([squares, accepted, float(count)]))
    total = parallel.broadcast_array(comm, total)
    return float(total[1] / total[2]), float(np.sqrt(1.0 + total[0] / total[2]) - 1.0)


def _fewest_steps_at_the_floor(make_stepper, state: ChainState, comm, rows: list) -> tuple[int, list]:
    """<dH> stopped falling with more steps: halve the count while <dH> stays within FLOOR_MARGIN of its floor
    (the least measured), as each halving halves the cost of a trajectory for little acceptance."""
    floor = min(v for _, _, v in rows)
    best = rows[-2][0]
    n = best // 2
    while n >= 1:
        rows.append((n, *_tuning_round(make_stepper(n), state, comm)))
        if rows[-1][2] > FLOOR_MARGIN * floor:
            break
        best, n = n, n // 2
    return best, rows


def tune_md_steps(
    make_stepper, state: ChainState, comm, first_steps: int, target: float, max_steps: int | None = None
) -> tuple[int, list]:
    """The MD step count for `target` acceptance, measured on real trajectories (which thermalise meanwhile).

    For a second-order integrator the mean energy violation <dH> of a trajectory scales as eps^4 and the
    acceptance is erfc(sqrt(<dH>)/2) (dH Gaussian with variance 2<dH>, as <exp(-dH)> = 1 demands), so one
    measurement predicts the step count. `make_stepper(n)` is the HMC with n steps (an OuterChain recording
    dH). Each round runs TRAJECTORIES_PER_ROUND trajectories of every chain; <dH> comes from <dH^2>
    (= <dH>^2 + 2<dH> for Gaussian dH, less noisy than <dH>), globally over the ranks (rank 0's numbers,
    broadcast), and the count is rescaled by (<dH>/target)^(1/4), at most 4x up or 2x down per round. It stops
    when the count is the same two rounds in a row (after MIN_ROUNDS). `max_steps` caps the count (an effective
    action's dH does not vanish with the step size, so more steps need not reach the target); with it, tuning also
    stops at the smaller count when more steps did not at least halve <dH> (the integrator's part would fall
    16-fold for twice the steps: what is left is the effective action's own mismatch, which steps cannot buy
    down), then halves the count while <dH> stays near that floor. Returns (md_steps, [(n, acceptance, <dH>)
    per round]).
    """
    wanted = target_energy_violation(target)
    n, rows, previous = max(1, int(first_steps)), [], None
    for round_ in range(MAX_ROUNDS):
        rows.append((n, *_tuning_round(make_stepper(n), state, comm)))
        violation = rows[-1][2]
        if max_steps is not None and len(rows) > 1 and n > rows[-2][0] and violation > FLOOR_RATIO * rows[-2][2]:
            return _fewest_steps_at_the_floor(make_stepper, state, comm, rows)
        scale = (max(violation, 1e-12) / wanted) ** 0.25
        chosen = int(min(4 * n, max(1, int(np.ceil(n * scale)), n // 2)))
        if max_steps is not None:
            chosen = min(chosen, int(max_steps))
        if round_ + 1 >= MIN_ROUNDS and chosen == n and previous == n:
            break
        previous, n = n, chosen
    return n, rows
