"""The explicit state of a rank's batch of chains, its initialisation and its measurement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from slmc_hpc.parallel import chain_rng
from slmc_hpc.physics import DoubleExchange, random_spins


@dataclass
class ChainState:
    """A batch of B independent chains: spins, their exact Ω and eigenvalues, one RNG stream each.

    Ω and the eigenvalues belong to the current spins, so measuring costs no diagonalisation.
    """

    spins: np.ndarray  # [B, N, 3] float64
    omega: np.ndarray  # [B]
    eigenvalues: np.ndarray  # [B, K]
    rngs: list[np.random.Generator]
    chains: np.ndarray  # [B] global chain indices

    @property
    def batch(self) -> int:
        return self.spins.shape[0]


@dataclass
class StepInfo:
    """What one sweep (exact) or outer step (SLMC) did, per chain."""

    accepted: np.ndarray  # [B] fraction of accepted proposals (SLMC: the outer test, 0 or 1)
    proposed_spins: np.ndarray  # [B, N, 3] exactly evaluated configurations (training data)
    proposed_omega: np.ndarray  # [B] their Ω
    timings: dict[str, float] = field(default_factory=dict)
    inner_acceptance: np.ndarray | None = None  # [B] SLMC: fraction of inner moves kept
    block_acceptance: np.ndarray | None = None  # [B] SLMC nested inner chain: fraction of sub-chains accepted


def init_chains(evaluator, seed: int, chains) -> ChainState:
    """Random initial spins for the given global chains, each drawn first from its own stream."""
    model: DoubleExchange = evaluator.model
    rngs = [chain_rng(seed, int(c)) for c in chains]
    spins = np.stack([random_spins(rng, (model.n_sites,)) for rng in rngs])
    omega, eigenvalues = evaluator.omega(spins)
    return ChainState(spins, np.asarray(omega, dtype=np.float64), eigenvalues, rngs, np.asarray(chains, dtype=np.int64))


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


def metropolis(log_ratio: np.ndarray, uniforms: np.ndarray) -> np.ndarray:
    """Accept with probability min(1, exp(log_ratio)) (boolean per chain)."""
    return uniforms < np.exp(np.minimum(log_ratio, 0.0))


def measure(model: DoubleExchange, state: ChainState) -> dict[str, np.ndarray]:
    """Observables of the current configurations, from the cached eigenvalues."""
    return model.observables(state.spins, state.eigenvalues)
