"""SU(2) link fields, su(2) algebra, momenta and gauge transformations (docs/design.md §9).

A link field is a complex128 tensor [B, 4, V, 2, 2]: B independent Markov chains, direction mu, site n.
An SU(2) matrix is the quaternion a0 + i a.sigma with |(a0, a)| = 1, i.e. [[a0 + i a3, a2 + i a1],
[-a2 + i a1, a0 - i a3]]. 2x2 products are written out elementwise (`mm`, `mv`), which is faster than
batched matmul for 2x2 blocks and makes every chain's result independent, bit for bit, of the batch.
Random draws use numpy: one Generator per chain, and each chain draws only from its own.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .lattice import Lattice4D

CDTYPE = torch.complex128
RDTYPE = torch.float64


def mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Product of (broadcast) stacks of 2x2 matrices, elementwise (no BLAS: deterministic per element)."""
    return a[..., :, 0:1] * b[..., 0:1, :] + a[..., :, 1:2] * b[..., 1:2, :]


def mv(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Stacks of 2x2 matrices [..., 2, 2] times colour vectors [..., 2]."""
    return a[..., :, 0] * v[..., 0:1] + a[..., :, 1] * v[..., 1:2]


def dagger(u: torch.Tensor) -> torch.Tensor:
    """Hermitian conjugate of the last two axes."""
    return u.conj().transpose(-1, -2)


def re_trace(u: torch.Tensor) -> torch.Tensor:
    """Re tr of stacks of 2x2 matrices."""
    return u[..., 0, 0].real + u[..., 1, 1].real


def quaternion_to_su2(a: torch.Tensor) -> torch.Tensor:
    """a [..., 4] real (a0, a1, a2, a3) -> a0 + i a.sigma [..., 2, 2] (SU(2) when |a| = 1)."""
    a0, a1, a2, a3 = a.unbind(-1)
    row0 = torch.stack([torch.complex(a0, a3), torch.complex(a2, a1)], dim=-1)
    row1 = torch.stack([torch.complex(-a2, a1), torch.complex(a0, -a3)], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def su2_to_quaternion(u: torch.Tensor) -> torch.Tensor:
    """The quaternion part [..., 4] of a 2x2 matrix: its projection onto the real span of SU(2)."""
    alpha = 0.5 * (u[..., 0, 0] + u[..., 1, 1].conj())  # a0 + i a3
    beta = 0.5 * (u[..., 0, 1] - u[..., 1, 0].conj())  # a2 + i a1
    return torch.stack([alpha.real, beta.imag, beta.real, alpha.imag], dim=-1)


def project_su2(u: torch.Tensor) -> torch.Tensor:
    """Re-unitarise as SU(2) (not U(2)): keep the quaternion part of u and normalise it.

    Exact for u already in SU(2) up to rounding; removes the drift that accumulates over many updates.
    """
    a = su2_to_quaternion(u)
    return quaternion_to_su2(a / torch.linalg.vector_norm(a, dim=-1, keepdim=True))


def generators() -> torch.Tensor:
    """The su(2) generators T_a = i sigma_a / 2, a = 1, 2, 3, as [3, 2, 2] complex128."""
    return algebra(torch.eye(3, dtype=RDTYPE))


def algebra(p: torch.Tensor) -> torch.Tensor:
    """p [..., 3] float64 -> sum_a p_a T_a [..., 2, 2] (anti-Hermitian, traceless)."""
    zero = torch.zeros_like(p[..., 0])
    return quaternion_to_su2(torch.stack([zero, 0.5 * p[..., 0], 0.5 * p[..., 1], 0.5 * p[..., 2]], dim=-1))


def exp_algebra(p: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """exp(eps * sum_a p_a T_a) in closed form: cos(theta) + i sin(theta) p.sigma/|p|, theta = eps |p| / 2.

    Written with sinc so it is smooth (and differentiable) at p = 0; the result is in SU(2) to rounding.
    """
    norm = torch.linalg.vector_norm(p, dim=-1)
    theta = 0.5 * eps * norm
    scale = 0.5 * eps * torch.sinc(theta / torch.pi)  # sin(theta) / |p|
    return quaternion_to_su2(torch.cat([torch.cos(theta)[..., None], scale[..., None] * p], dim=-1))


def trace_generators(w: torch.Tensor) -> torch.Tensor:
    """Re tr(T_a w) for a = 1, 2, 3: [..., 2, 2] -> [..., 3].

    With T_a = i sigma_a / 2: Re tr(T_a w) = -Im tr(sigma_a w) / 2. This is how every force is read off:
    d/ds f(exp(s T_a) U) = Re tr(T_a U A) when f(U) = Re tr(U A).
    """
    w00, w01, w10, w11 = w[..., 0, 0], w[..., 0, 1], w[..., 1, 0], w[..., 1, 1]
    return -0.5 * torch.stack([(w01 + w10).imag, (w01 - w10).real, (w00 - w11).imag], dim=-1)


def identity_links(lattice: Lattice4D, batch: int) -> torch.Tensor:
    """The cold (free-field) configuration, all U = 1: [B, 4, V, 2, 2]."""
    eye = torch.eye(2, dtype=CDTYPE)
    return eye.expand(batch, 4, lattice.volume, 2, 2).clone()


def _haar(rngs: Sequence[np.random.Generator], shape: tuple[int, ...]) -> torch.Tensor:
    """Haar-random SU(2) matrices [B, *shape, 2, 2]: normalised Gaussian quaternions, one chain per generator."""
    a = np.stack([rng.standard_normal((*shape, 4)) for rng in rngs])
    a /= np.linalg.norm(a, axis=-1, keepdims=True)
    return quaternion_to_su2(torch.from_numpy(a))


def haar_links(lattice: Lattice4D, rngs: Sequence[np.random.Generator]) -> torch.Tensor:
    """The hot start: Haar-random links [B, 4, V, 2, 2], chain b drawn from rngs[b] only."""
    return _haar(rngs, (4, lattice.volume))


def draw_momenta(rngs: Sequence[np.random.Generator], volume: int) -> torch.Tensor:
    """HMC momenta p_a ~ N(0, 1): [B, 4, V, 3] float64, chain b from rng.standard_normal((4, V, 3))."""
    return torch.from_numpy(np.stack([rng.standard_normal((4, volume, 3)) for rng in rngs]))


def random_gauge_transformation(lattice: Lattice4D, rngs: Sequence[np.random.Generator]) -> torch.Tensor:
    """Haar-random g(n) [B, V, 2, 2], chain b from rngs[b] only."""
    return _haar(rngs, (lattice.volume,))


def gauge_transform_links(links: torch.Tensor, g: torch.Tensor, lattice: Lattice4D) -> torch.Tensor:
    """U_mu(n) -> g(n) U_mu(n) g(n + mu)^dagger for every mu and n."""
    g_here = g[:, None]  # [B, 1, V, 2, 2]
    g_next = g[:, lattice.fwd]  # [B, 4, V, 2, 2]
    return mm(mm(g_here, links), dagger(g_next))


def gauge_transform_field(psi: torch.Tensor, g: torch.Tensor, sites: torch.Tensor | None = None) -> torch.Tensor:
    """psi(n) -> g(n) psi(n) for a fermion field [B, n_sites, 2] living on `sites` (default: every site).

    Pass lattice.even (or lattice.odd) for a field on one parity; D then transforms as g D g^dagger.
    """
    gs = g if sites is None else g[:, sites]
    return mv(gs, psi)
