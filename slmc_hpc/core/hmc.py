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


class Dynamics(Protocol):
    """Molecular dynamics on one configuration space.

    `field(configs)` gives the working representation of the MD (a copy); `configs(field)` turns it back
    into the state's. `draw_momenta(rngs)` draws each chain's momenta from its own stream; `kinetic(p)` is
    K per chain [B] (float64); `drift(field, p, eps)` moves the field along p for a time eps and
    `kick(p, force, eps)` the momenta, p <- p - eps * force, both returning the new values.
    """

    def field(self, configs: np.ndarray) -> Any: ...

    def configs(self, field: Any) -> np.ndarray: ...

    def draw_momenta(self, rngs: list[np.random.Generator]) -> Any: ...

    def kinetic(self, momenta: Any) -> np.ndarray: ...

    def drift(self, field: Any, momenta: Any, eps: float) -> Any: ...

    def kick(self, momenta: Any, force: Any, eps: float) -> Any: ...


class HMCUpdate:
    """One trajectory of `n_steps` steps of length `trajectory_length / n_steps` per chain.

    `force(field)` is the MD force in the dynamics' representation. `refresh(state)`, where given, runs
    after the momenta are drawn and returns the current configurations' action under what it drew
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
        refresh: Callable[[ChainState], np.ndarray] | None = None,
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
        momenta = d.draw_momenta(state.rngs)
        action_before = self.refresh(state) if self.refresh is not None else None
        uniforms = np.array([rng.random() for rng in state.rngs])
        started = time.perf_counter()
        field = d.field(state.config)
        kinetic_before = d.kinetic(momenta)

        def kick(eps: float) -> None:
            nonlocal momenta
            momenta = d.kick(momenta, self.force(field), eps)

        def drift(eps: float) -> None:
            nonlocal field
            field = d.drift(field, momenta, eps)

        integrate(self.integrator, self.n_steps, self.step_size, kick, drift)
        correction = -(d.kinetic(momenta) - kinetic_before)
        samples = self.diagnostics() if self.diagnostics is not None else {}
        return Proposal(
            config=d.configs(field),
            correction=correction,
            uniforms=uniforms,
            action_before=action_before,
            timings={"inner": time.perf_counter() - started},
            samples=samples,
        )
