"""Hybrid Monte Carlo for the spins: molecular dynamics on the spheres with the exact or an effective force.

The configuration space is a product of unit spheres with the uniform measure, so the MD runs there:
momenta p_i in the tangent plane at S_i (standard Gaussian, 2 degrees of freedom per spin), K = Σ |p_i|²/2,
and a geodesic drift, the exact free motion on the sphere (a rotation in the plane of S_i and p_i):

    S_i(t) = S_i cos(|p_i| t) + p̂_i sin(|p_i| t),   p_i(t) = p_i cos(|p_i| t) - S_i |p_i| sin(|p_i| t),

with kicks by the force projected onto the tangent plane. Both preserve the Liouville measure of the
tangent bundle and are reversible, so leapfrog or Omelyan built from them is an exact MH proposal for
exp(-K - S) whatever the force; integrating out the Gaussian momenta leaves exp(-S) on the uniform
measure of the spheres. (The other option, unconstrained x_i ∈ R³ with S_i = x_i/|x_i| and a Gaussian weight
on |x_i|, moves a radial coordinate that the weight does not depend on, and its force diverges at small |x|.)

Exact HMC: S = Ω/T with ∂Ω/∂S_i = (J/2) Σ_k f(E_k) <k|σ_i|k> from one `eigh` per force (`DenseEvaluator.
omega_and_gradient`). Self-learning HMC: the force of H_eff/T (analytic for the linear model, autograd for the
transformer, float64), one diagonalisation per trajectory for the exact test.
"""

from __future__ import annotations

import numpy as np

from slmc_hpc.core.chains import OuterChain
from slmc_hpc.core.hmc import HMCUpdate
from slmc_hpc.core.protocols import Force
from slmc_hpc.errors import ConfigError


def tangent(vectors: np.ndarray, spins: np.ndarray) -> np.ndarray:
    """The component of `vectors` [B, N, 3] in the tangent planes of `spins` (unit vectors)."""
    return vectors - np.sum(vectors * spins, axis=-1, keepdims=True) * spins


class SphereDynamics:
    """`core.hmc.Dynamics` for spins [B, N, 3] on unit spheres (numpy float64)."""

    def field(self, configs: np.ndarray) -> np.ndarray:
        return np.array(configs, dtype=np.float64)

    def configs(self, field: np.ndarray) -> np.ndarray:
        return field

    def draw_momenta(self, rngs: list[np.random.Generator], field: np.ndarray) -> np.ndarray:
        """Per chain `rng.standard_normal((N, 3))`, projected onto the tangent planes: 2D standard Gaussians."""
        raw = np.stack([rng.standard_normal(field.shape[1:]) for rng in rngs])
        return tangent(raw, field)

    def kinetic(self, momenta: np.ndarray) -> np.ndarray:
        return 0.5 * np.sum(momenta * momenta, axis=(1, 2))

    def drift(self, field: np.ndarray, momenta: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
        """The geodesic flow for a time eps (a rotation per spin); rounding is projected away afterwards."""
        speed = np.linalg.norm(momenta, axis=-1, keepdims=True)
        angle = speed * eps
        cos, sinc = np.cos(angle), eps * np.sinc(angle / np.pi)  # sin(angle)/speed, smooth at speed 0
        spins = field * cos + momenta * sinc
        momenta = momenta * cos - field * (speed * speed * sinc)
        spins /= np.linalg.norm(spins, axis=-1, keepdims=True)
        return spins, tangent(momenta, spins)

    def kick(self, momenta: np.ndarray, force: np.ndarray, eps: float) -> np.ndarray:
        return momenta - eps * force


class ExactSpinForce:
    """The force of the exact action Ω/T on the spheres: one `eigh` per configuration (dense evaluator only)."""

    def __init__(self, action):
        from slmc_hpc.systems.double_exchange.evaluators.dense import DenseEvaluator

        evaluator = action.evaluator
        if not isinstance(evaluator, DenseEvaluator):  # the schema refuses other evaluators first
            raise ConfigError(f"evaluator.kind: the {type(evaluator).__name__} gives no eigenvectors for HMC forces")
        self.evaluator, self.temperature = evaluator, action.model.T

    def __call__(self, spins: np.ndarray) -> np.ndarray:
        _, _, gradient = self.evaluator.omega_and_gradient(spins)
        return tangent(gradient / self.temperature, spins)


class EffectiveSpinForce:
    """The force of H_eff/T on the spheres, from a model with the `Force` ability (float64, deterministic)."""

    def __init__(self, effective: Force, temperature: float):
        if not isinstance(effective, Force):
            raise TypeError(f"the {type(effective).__name__} model gives no force for self-learning HMC")
        self.effective, self.temperature = effective, temperature

    def __call__(self, spins: np.ndarray) -> np.ndarray:
        _, gradient = self.effective.force(spins)
        return tangent(gradient / self.temperature, spins)


def hmc_chain(action, force, integrator: str, md_steps: int, trajectory_length: float) -> OuterChain:
    """(SL)HMC for spins: a trajectory under `force` followed by the exact test with Ω/T; dH recorded."""
    update = HMCUpdate(SphereDynamics(), force, integrator, md_steps, trajectory_length)
    return OuterChain(action, update, record_dh=True)
