"""A rank's batch of chains and the one exact test that every update ends in.

SLMC and (self-learning) HMC are one outer algorithm: an update proposes x' by dynamics reversible
under some effective weight and returns the log-correction c that makes the chain exact; the outer
test accepts with min(1, exp(-(S(x') - S(x)) + c)), S the dimensionless exact action. For an inner
Metropolis chain under H_eff at temperature T, c = (H_eff(x') - H_eff(x))/T; for an MD trajectory,
c = -(K(p') - K(p)). `metropolis` is that test, written once; `OuterChain` wraps an update with it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from slmc_hpc.core.protocols import Evaluation, ExactAction
from slmc_hpc.parallel import chain_rng


@dataclass
class ChainState:
    """A batch of B independent chains: configurations, their exact action and evaluation rows, one RNG stream each.

    `rows` hold what the exact evaluation of the current configurations left (Ω and eigenvalues for
    spins), so measuring costs no second evaluation; `action` is their dimensionless exact action S.
    """

    config: np.ndarray  # [B, ...] float64 (spins [B, N, 3]) or complex128 (links)
    action: np.ndarray  # [B]
    rows: dict[str, np.ndarray]  # [B, ...] each
    rngs: list[np.random.Generator]
    chains: np.ndarray  # [B] global chain indices

    @property
    def batch(self) -> int:
        return self.config.shape[0]

    def take(self, accepted: np.ndarray, configs: np.ndarray, evaluation: Evaluation) -> None:
        """Move the chains where `accepted` (bool [B]) to `configs` with their `evaluation`."""
        self.config[accepted] = configs[accepted]
        self.action[accepted] = evaluation.action[accepted]
        for name, values in evaluation.rows.items():
            self.rows[name][accepted] = values[accepted]


@dataclass
class StepInfo:
    """What one step did, per chain.

    `accepted`: fraction of accepted proposals [B] (0 or 1 for an outer test). `proposed` and
    `proposed_target`: every exactly evaluated configuration and its target (training data).
    `extras`: per-chain diagnostics of the update (inner acceptance, ...). `samples`: per-chain values
    to record at the next measurement, as observables (the energy violation dH of a trajectory).
    """

    accepted: np.ndarray
    proposed: np.ndarray
    proposed_target: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Proposal:
    """An update's proposal: x' [B, ...], the log-correction c [B] and the uniforms of the test [B].

    The uniforms are drawn by the update, from each chain's stream, in the update's documented order.
    `before`: the current configurations' exact evaluation where the update changed their action
    (pseudofermions drawn for this step); otherwise the state's action is used. `extras`, `samples` and
    `timings` go into the StepInfo.
    """

    config: np.ndarray
    correction: np.ndarray
    uniforms: np.ndarray
    before: Evaluation | None = None
    timings: dict[str, float] = field(default_factory=dict)
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict)


class Update(Protocol):
    """Proposes x' from the state's configurations without changing the state."""

    def propose(self, state: ChainState) -> Proposal: ...


def metropolis(log_ratio: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Accept with probability min(1, exp(log_ratio)) (boolean per chain)."""
    return uniforms < np.exp(np.minimum(log_ratio, 0.0))


def exact_test(action_after: np.ndarray, action_before: np.ndarray, correction, uniforms: np.ndarray) -> np.ndarray:
    """The outer test: accept x' with min(1, exp(-(S(x') - S(x)) + c)); boolean per chain."""
    return metropolis(-(action_after - action_before) + correction, uniforms)


class OuterChain:
    """An update followed by the exact test, one exact evaluation per chain and step.

    With `record_dh`, the step records dH = (S(x') - S(x)) - c, the change of the MD Hamiltonian
    (for a trajectory, c = -ΔK), whose ⟨exp(-dH)⟩ = 1 is the check every HMC code owes.
    Where the update re-evaluated the current configurations (`Proposal.before`), they are training data
    too: `StepInfo.proposed` holds them first, then the proposals (a trajectory's two ends under its one
    pseudofermion field).
    """

    def __init__(self, action: ExactAction, update: Update, record_dh: bool = False):
        self.action, self.update, self.record_dh = action, update, record_dh

    def step(self, state: ChainState) -> StepInfo:
        proposal = self.update.propose(state)
        started = time.perf_counter()
        evaluation = self.action.evaluate(proposal.config)
        exact = time.perf_counter() - started
        before = state.action if proposal.before is None else proposal.before.action
        accepted = exact_test(evaluation.action, before, proposal.correction, proposal.uniforms)
        samples = dict(proposal.samples)
        if self.record_dh:
            samples["dH"] = (evaluation.action - before) - proposal.correction
        proposed, targets = proposal.config, np.asarray(evaluation.target, dtype=np.float64)
        if proposal.before is not None:
            proposed = np.concatenate([state.config, proposed])
            targets = np.concatenate([np.asarray(proposal.before.target, dtype=np.float64), targets])
        state.take(accepted, proposal.config, evaluation)
        if proposal.before is not None:  # the kept configurations' action under this step's fields
            state.action[~accepted] = proposal.before.action[~accepted]
        return StepInfo(
            accepted=accepted.astype(np.float64),
            proposed=proposed,
            proposed_target=targets,
            timings={**proposal.timings, "exact": proposal.timings.get("exact", 0.0) + exact},
            extras=proposal.extras,
            samples=samples,
        )


def initial_state(action: ExactAction, configs: np.ndarray, rngs: list[np.random.Generator], chains) -> ChainState:
    """Chains at `configs` (drawn from their own streams by the system) with their exact evaluation."""
    evaluation = action.evaluate(configs)
    return ChainState(
        config=configs,
        action=np.asarray(evaluation.action, dtype=np.float64).copy(),
        rows={name: np.array(values) for name, values in evaluation.rows.items()},
        rngs=rngs,
        chains=np.asarray(chains, dtype=np.int64),
    )


def chain_streams(seed: int, chains) -> list[np.random.Generator]:
    """One stream per global chain (`parallel.chain_rng`)."""
    return [chain_rng(seed, int(c)) for c in chains]
