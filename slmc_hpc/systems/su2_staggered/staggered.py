"""Staggered fermions with even/odd preconditioning: operators, exact (dense) and pseudofermion actions.

    Dhop psi(n) = 1/2 sum_mu eta_mu(n) [U_mu(n) psi(n+mu) - U_mu(n-mu)^dag psi(n-mu)]   (antiperiodic in t)
    D = m + Dhop,  M_ee = m^2 - D_eo D_oe = m^2 + D_eo D_eo^dag,  det D = det M_ee

Fermion fields are complex128 [B, V_half, 2] on one parity (colour last), site k of a half field being
lattice.even[k] (or lattice.odd[k]); dense matrices use the row index 2 k + colour. Every hop of D_eo and
D_oe is one 2x2 block "coefficient x link" (8 per site: 4 forward, 4 backward), computed once per link
field (`Hops`) and applied with gathers and elementwise products, so each chain's result is independent
of the rest of the batch bit for bit.

Forces are d_a S = d/ds S(exp(s T_a) U_mu(n)) at s = 0, [B, 4, V, 3], with T_a = i sigma_a / 2. Writing
c = 1/2 eta_mu(n) bc_fwd_mu(n), the link enters D as Dhop[n, n+mu] = c U and Dhop[n+mu, n] = -c U^dag.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from .lattice import Lattice4D
from .links import CDTYPE, dagger, mm, mv, trace_generators

NOISE_KINDS = ("z2", "gaussian")


class CGNotConverged(RuntimeError):
    """Conjugate gradients reached max_iter before |r|/|b| < tol on at least one chain."""


# ----------------------------------------------------------------------------------------------- hop tables


@dataclass(frozen=True)
class _HopTable:
    """The 8 hops out of every site of one parity: hop j < 4 is forward in mu = j, hop j >= 4 backward in j - 4."""

    mu: torch.Tensor  # [8, 1] direction of the link
    link_site: torch.Tensor  # [8, Vh] site of the link: n (forward) or n - mu (backward, used as U^dag)
    target: torch.Tensor  # [8, Vh] half index (other parity) of n +- mu
    coef: torch.Tensor  # [8, Vh] +1/2 eta bc_fwd (forward), -1/2 eta bc_bwd (backward)


@lru_cache(maxsize=32)
def _hop_table(lattice: Lattice4D, parity: int) -> _HopTable:
    sites = lattice.even if parity == 0 else lattice.odd
    fwd, bwd = lattice.fwd[:, sites], lattice.bwd[:, sites]
    eta = lattice.eta[:, sites]
    return _HopTable(
        mu=torch.arange(8)[:, None] % 4,
        link_site=torch.cat([sites.expand(4, -1), bwd]),
        target=lattice.half_index[torch.cat([fwd, bwd])],
        coef=torch.cat([0.5 * eta * lattice.bc_fwd[:, sites], -0.5 * eta * lattice.bc_bwd[:, sites]]),
    )


@lru_cache(maxsize=32)
def _link_pairs(lattice: Lattice4D) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """For every link (mu, n): half indices (o, e) of its odd and even end, the parity sign and c = 1/2 eta bc_fwd."""
    n = torch.arange(lattice.volume).expand(4, -1)
    nn = lattice.fwd
    is_even = (lattice.parity == 0).expand(4, -1)
    o = lattice.half_index[torch.where(is_even, nn, n)]
    e = lattice.half_index[torch.where(is_even, n, nn)]
    sign = 1.0 - 2.0 * lattice.parity.to(torch.float64)
    return o, e, sign, 0.5 * lattice.eta * lattice.bc_fwd


@dataclass(frozen=True)
class Hops:
    """The hop blocks of D_eo ([B, 8, Ve, 2, 2]) and D_oe ([B, 8, Vo, 2, 2]) of one link field.

    Computed once per link field and reused by every operator application (e.g. each CG iteration).
    """

    eo: torch.Tensor
    oe: torch.Tensor
    eo_target: torch.Tensor
    oe_target: torch.Tensor

    def select(self, chains: torch.Tensor) -> Hops:
        """The hops of a subset (or a repetition) of the chains."""
        return Hops(self.eo[chains], self.oe[chains], self.eo_target, self.oe_target)

    def deo(self, psi_o: torch.Tensor) -> torch.Tensor:
        """D_eo psi_o: odd field -> even field."""
        return mv(self.eo, psi_o[:, self.eo_target]).sum(dim=1)

    def doe(self, psi_e: torch.Tensor) -> torch.Tensor:
        """D_oe psi_e: even field -> odd field."""
        return mv(self.oe, psi_e[:, self.oe_target]).sum(dim=1)

    def mee(self, mass: float, psi_e: torch.Tensor) -> torch.Tensor:
        """M_ee psi_e = m^2 psi_e - D_eo D_oe psi_e."""
        return mass * mass * psi_e - self.deo(self.doe(psi_e))


def _blocks(links: torch.Tensor, table: _HopTable) -> torch.Tensor:
    u = links[:, table.mu, table.link_site]  # [B, 8, Vh, 2, 2]
    u = torch.cat([u[:, :4], dagger(u[:, 4:])], dim=1)
    return table.coef[..., None, None] * u


def hops(links: torch.Tensor, lattice: Lattice4D) -> Hops:
    """Hop blocks of D_eo and D_oe for links [B, 4, V, 2, 2]."""
    te, to = _hop_table(lattice, 0), _hop_table(lattice, 1)
    return Hops(_blocks(links, te), _blocks(links, to), te.target, to.target)


# ------------------------------------------------------------------------------------- matrix-free operators


def apply_deo(links: torch.Tensor, lattice: Lattice4D, psi_o: torch.Tensor) -> torch.Tensor:
    """D_eo psi_o: [B, Vo, 2] -> [B, Ve, 2]."""
    return hops(links, lattice).deo(psi_o)


def apply_doe(links: torch.Tensor, lattice: Lattice4D, psi_e: torch.Tensor) -> torch.Tensor:
    """D_oe psi_e: [B, Ve, 2] -> [B, Vo, 2]."""
    return hops(links, lattice).doe(psi_e)


def apply_dhop(links: torch.Tensor, lattice: Lattice4D, psi: torch.Tensor) -> torch.Tensor:
    """Dhop psi on a full field [B, V, 2] (sites in lexicographic order)."""
    h = hops(links, lattice)
    out = torch.empty_like(psi)
    out[:, lattice.even] = h.deo(psi[:, lattice.odd])
    out[:, lattice.odd] = h.doe(psi[:, lattice.even])
    return out


def apply_mee(links: torch.Tensor, lattice: Lattice4D, mass: float, psi_e: torch.Tensor) -> torch.Tensor:
    """M_ee psi_e = (m^2 - D_eo D_oe) psi_e: [B, Ve, 2] -> [B, Ve, 2]."""
    return hops(links, lattice).mee(mass, psi_e)


# ----------------------------------------------------------------------------------------- dense operators


def _scatter_blocks(
    blocks: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int, diagonal: float = 0.0
) -> torch.Tensor:
    """Sum 2x2 blocks [B, *idx, 2, 2] (plus `diagonal` times 1) into a dense [B, 2 n_rows, 2 n_cols] matrix.

    The in-place scatter is into a fresh tensor, so autograd still flows into `blocks`.
    """
    batch = blocks.shape[0]
    b = torch.arange(batch).reshape(batch, *([1] * rows.dim()))
    dense = blocks.new_zeros(batch, n_rows, n_cols, 2, 2)
    dense.index_put_((b, rows, cols), blocks, accumulate=True)
    if diagonal:
        k = torch.arange(min(n_rows, n_cols))
        eye = torch.eye(2, dtype=blocks.dtype).mul(diagonal).expand(batch, k.numel(), 2, 2)
        dense.index_put_((torch.arange(batch)[:, None], k, k), eye, accumulate=True)
    return dense.permute(0, 1, 3, 2, 4).reshape(batch, 2 * n_rows, 2 * n_cols)


def dense_deo(links: torch.Tensor, lattice: Lattice4D) -> torch.Tensor:
    """D_eo as a dense matrix [B, 2 Ve, 2 Vo] (row 2 k + colour)."""
    h, vh = hops(links, lattice), lattice.half_volume
    return _scatter_blocks(h.eo, torch.arange(vh).expand(8, -1), h.eo_target, vh, vh)


def dense_dhop(links: torch.Tensor, lattice: Lattice4D) -> torch.Tensor:
    """The full Dhop as a dense matrix [B, 2V, 2V] (row 2 n + colour, lexicographic sites); for small lattices."""
    h = hops(links, lattice)
    rows = torch.cat([lattice.even.expand(8, -1), lattice.odd.expand(8, -1)], dim=1)
    cols = torch.cat([lattice.odd[h.eo_target], lattice.even[h.oe_target]], dim=1)
    return _scatter_blocks(torch.cat([h.eo, h.oe], dim=2), rows, cols, lattice.volume, lattice.volume)


def dense_mee(links: torch.Tensor, lattice: Lattice4D, mass: float) -> torch.Tensor:
    """M_ee = m^2 - D_eo D_oe as a dense Hermitian matrix [B, 2 Ve, 2 Ve].

    Built from the 64 two-hop paths e -> o -> e' of every even site (O(V) blocks scattered into place)
    rather than a dense product, which would cost O(V^3). Hermitian to rounding: blocks (e, e') and (e', e)
    sum the same paths in different orders (Cholesky reads the lower triangle only).
    """
    h, vh = hops(links, lattice), lattice.half_volume
    j = torch.arange(8)[None, :, None]
    mid = h.eo_target[:, None, :]  # [8, 1, Ve]: odd site reached by the first hop
    paths = -mm(h.eo[:, :, None], h.oe[:, j, mid])  # [B, 8, 8, Ve, 2, 2]
    dest = h.oe_target[j, mid]  # [8, 8, Ve]
    return _scatter_blocks(paths, torch.arange(vh).expand(8, 8, -1), dest, vh, vh, diagonal=mass * mass)


def mee_cholesky(links: torch.Tensor, lattice: Lattice4D, mass: float) -> torch.Tensor:
    """Lower Cholesky factor L of M_ee = L L^dag, [B, 2 Ve, 2 Ve]: the one O(V^3) step of the dense evaluator."""
    return torch.linalg.cholesky(dense_mee(links, lattice, mass))


def logdet_mee(links: torch.Tensor, lattice: Lattice4D, mass: float, chol: torch.Tensor | None = None) -> torch.Tensor:
    """log det M_ee (= log det D) per chain [B], from the Cholesky factor (pass `chol` to reuse one)."""
    chol = mee_cholesky(links, lattice, mass) if chol is None else chol
    return 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1).real).sum(dim=-1)


def fermion_action_dense(
    links: torch.Tensor, lattice: Lattice4D, mass: float, n_flavors: int, chol: torch.Tensor | None = None
) -> torch.Tensor:
    """The exact fermion action -(Nf/4) log det M_ee per chain [B]."""
    return -0.25 * n_flavors * logdet_mee(links, lattice, mass, chol)


def fermion_force_dense(
    links: torch.Tensor, lattice: Lattice4D, mass: float, n_flavors: int, chol: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact force of -(Nf/4) log det M_ee, [B, 4, V, 3], from G = M_ee^-1 and local contractions.

    d_a S = -(Nf/4) tr(G d_a M_ee). With M_ee = m^2 - D_eo D_oe, D_oe = -D_eo^dag and X = D_oe G:
    n even: tr(G dM) = -2c Re tr(T_a U X[n+mu, n]);  n odd: tr(G dM) = +2c Re tr(T_a U X[n, n+mu]^dag).
    Only the blocks X[o, e] on the two ends of each link are needed: 8 hops each, O(V) in all.
    """
    chol = mee_cholesky(links, lattice, mass) if chol is None else chol
    batch, vh = links.shape[0], lattice.half_volume
    g = torch.cholesky_inverse(chol).reshape(batch, vh, 2, vh, 2).permute(0, 1, 3, 2, 4)  # G[e, e'] blocks
    h = hops(links, lattice)
    o, e, sign, c = _link_pairs(lattice)
    j = torch.arange(8)[:, None, None]
    x = mm(h.oe[:, j, o], g[:, h.oe_target[j, o], e]).sum(dim=1)  # X[o, e] = sum_j D_oe[o, o+-nu] G[o+-nu, e]
    z = torch.where((sign > 0)[None, None, :, None, None], x, -dagger(x))
    return (0.5 * n_flavors) * c[..., None] * trace_generators(mm(links, z))


def pbp_dense(
    links: torch.Tensor, lattice: Lattice4D, mass: float, n_flavors: int, chol: torch.Tensor | None = None
) -> torch.Tensor:
    """Exact chiral condensate (Nf/4) Re Tr D^-1 / V = (Nf/4) 2m Tr M_ee^-1 / V per chain [B]."""
    chol = mee_cholesky(links, lattice, mass) if chol is None else chol
    eye = torch.eye(chol.shape[-1], dtype=chol.dtype).expand_as(chol)
    inverse = torch.linalg.solve_triangular(chol, eye, upper=False)  # Tr (L L^dag)^-1 = |L^-1|^2: half of potri
    trace = (inverse.real**2 + inverse.imag**2).sum(dim=(-2, -1))
    return 0.25 * n_flavors * 2.0 * mass * trace / lattice.volume


def pseudofermion_action_dense(
    links: torch.Tensor, lattice: Lattice4D, mass: float, phi: torch.Tensor, chol: torch.Tensor | None = None
) -> torch.Tensor:
    """S_f = phi^dag M_ee^-1 phi per chain [B] by a dense Cholesky solve (the reference for the CG version)."""
    chol = mee_cholesky(links, lattice, mass) if chol is None else chol
    x = torch.cholesky_solve(phi.reshape(phi.shape[0], -1, 1), chol).reshape(phi.shape)
    return _vdot(phi, x).real


# ------------------------------------------------------------------------------------ conjugate gradients


def _vdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a, b> = sum a^* b per chain, [B, ...] -> [B]."""
    return (a.conj() * b).flatten(1).sum(dim=1)


def _norm2(a: torch.Tensor) -> torch.Tensor:
    return (a.real * a.real + a.imag * a.imag).flatten(1).sum(dim=1)


def conjugate_gradient(
    apply: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    tol: float = 1e-10,
    max_iter: int = 10_000,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve A x = b for a batch of Hermitian positive definite systems, each converging on its own.

    `apply(v, chains)` returns A v for the systems `chains` (int64 indices into the batch), v [len(chains), ...].
    Starts from x = 0, so x is a deterministic function of A and b (HMC reversibility needs that); a system
    stops being updated once |r|/|b| < tol (recursive residual), so its solution and iteration count never
    depend on the other systems. Returns (x, iterations [B] int64); raises CGNotConverged if a system reaches
    max_iter or breaks down (non-finite residual: A not positive definite).
    """
    if not tol > 0 or max_iter < 1:
        raise ValueError(f"CG needs tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    batch = b.shape[0]
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rr = _norm2(r)
    bb = rr.clone()
    target = (tol * tol) * bb
    iters = torch.zeros(batch, dtype=torch.int64)
    active = rr > target
    while bool(active.any()):
        chains = torch.nonzero(active).squeeze(1)
        stuck = iters[chains] >= max_iter
        if bool(stuck.any()):
            worst = torch.sqrt(rr[chains] / bb[chains]).max().item()
            raise CGNotConverged(
                f"CG did not reach |r|/|b| < {tol:g} in {max_iter} iterations on chains "
                f"{chains[stuck].tolist()} (worst |r|/|b| = {worst:.3e})"
            )
        pc, rc, rrc = p[chains], r[chains], rr[chains]
        ap = apply(pc, chains)
        alpha = (rrc / _vdot(pc, ap).real).reshape(-1, *([1] * (b.dim() - 1)))
        x[chains] = x[chains] + alpha * pc
        rc = rc - alpha * ap
        rr_new = _norm2(rc)
        finite = torch.isfinite(rr_new)
        if not bool(finite.all()):
            raise CGNotConverged(f"CG broke down (non-finite residual) on chains {chains[~finite].tolist()}")
        beta = (rr_new / rrc).reshape(alpha.shape)
        p[chains] = rc + beta * pc
        r[chains] = rc
        rr[chains] = rr_new
        iters[chains] += 1
        active[chains] = rr_new > target[chains]
    return x, iters


class _MeeOn:
    """apply(v, chains) for M_ee, re-selecting the hop blocks only when the set of active chains changes."""

    def __init__(self, h: Hops, mass: float) -> None:
        self.hops, self.mass = h, mass
        self.chains: torch.Tensor | None = None
        self.selected = h

    def __call__(self, v: torch.Tensor, chains: torch.Tensor) -> torch.Tensor:
        if self.chains is None or not torch.equal(self.chains, chains):
            self.chains, self.selected = chains, self.hops.select(chains)
        return self.selected.mee(self.mass, v)


def solve_mee(
    links: torch.Tensor, lattice: Lattice4D, mass: float, b: torch.Tensor, tol: float = 1e-10, max_iter: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """x = M_ee^-1 b by conjugate gradients, b [B, Ve, 2]; returns (x, iterations per chain)."""
    return conjugate_gradient(_MeeOn(hops(links, lattice), mass), b, tol, max_iter)


# --------------------------------------------------------------------------------- pseudofermions and noise


def _complex_gaussian(rngs: Sequence[np.random.Generator], n_sites: int) -> torch.Tensor:
    """[B, n_sites, 2] complex Gaussian, E|eta|^2 = 1 per component: (re + i im)/sqrt 2, (n, 2, 2) normals."""
    draws = np.stack([rng.standard_normal((n_sites, 2, 2)) for rng in rngs]) / np.sqrt(2.0)
    return torch.from_numpy(draws[..., 0] + 1j * draws[..., 1]).to(CDTYPE)


def draw_pseudofermion(
    links: torch.Tensor, lattice: Lattice4D, mass: float, rngs: Sequence[np.random.Generator]
) -> torch.Tensor:
    """Heat bath phi_e = m eta_e - D_eo eta_o, so that <phi phi^dag> = M_ee: [B, Ve, 2].

    Chain b draws eta on the whole lattice (lexicographic sites, [V, 2] complex) from rngs[b] only.
    """
    eta = _complex_gaussian(rngs, lattice.volume)
    return mass * eta[:, lattice.even] - apply_deo(links, lattice, eta[:, lattice.odd])


def pseudofermion_force_from_solution(links: torch.Tensor, lattice: Lattice4D, x: torch.Tensor) -> torch.Tensor:
    """Force of S_f = phi^dag M_ee^-1 phi given X = M_ee^-1 phi: [B, 4, V, 3].

    d S_f = -X^dag dM X = X^dag dD_eo Y - Y^dag dD_oe X with Y = D_oe X. Put Psi = X on even, Y on odd sites:
    d_a S_f = 2 c eps(n) Re tr(T_a U_mu(n) Psi(n+mu) Psi(n)^dag), eps(n) = +1 even, -1 odd.
    """
    batch = x.shape[0]
    y = apply_doe(links, lattice, x)
    psi = x.new_empty(batch, lattice.volume, 2)
    psi[:, lattice.even] = x
    psi[:, lattice.odd] = y
    _, _, sign, c = _link_pairs(lattice)
    outer = psi[:, lattice.fwd][..., :, None] * psi.conj()[:, None, :, None, :]  # Psi(n+mu) Psi(n)^dag
    return (2.0 * c * sign)[..., None] * trace_generators(mm(links, outer))


def pseudofermion_action(
    links: torch.Tensor, lattice: Lattice4D, mass: float, phi: torch.Tensor, tol: float = 1e-10, max_iter: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_f = phi^dag M_ee^-1 phi per chain [B] by CG; returns (S_f, CG iterations)."""
    x, iters = solve_mee(links, lattice, mass, phi, tol, max_iter)
    return _vdot(phi, x).real, iters


def pseudofermion_action_adjoint(
    links: torch.Tensor, lattice: Lattice4D, mass: float, phi: torch.Tensor, tol: float = 1e-10, max_iter: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """S_f = phi^dag M_ee^-1 phi per chain [B] as an expression autograd differentiates in the links (a network's
    output): 2 Re phi^dag X - X^dag M_ee X with X = M_ee^-1 phi by CG, taken as a constant. At the solution it is
    phi^dag X (to second order in CG's residual) and its first variation is -X^dag dM_ee X, the pseudofermion force,
    so one CG solve gives both and no gradient flows through CG's iterations. Returns (S_f, CG iterations)."""
    with torch.no_grad():
        x, iters = solve_mee(links.detach(), lattice, mass, phi, tol, max_iter)
    return 2.0 * _vdot(phi, x).real - _vdot(x, apply_mee(links, lattice, mass, x)).real, iters


def pseudofermion_force(
    links: torch.Tensor, lattice: Lattice4D, mass: float, phi: torch.Tensor, tol: float = 1e-10, max_iter: int = 10_000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Force of S_f = phi^dag M_ee^-1 phi [B, 4, V, 3] by one CG solve; returns (force, CG iterations)."""
    x, iters = solve_mee(links, lattice, mass, phi, tol, max_iter)
    return pseudofermion_force_from_solution(links, lattice, x), iters


def draw_noise(rngs: Sequence[np.random.Generator], n_sites: int, kind: str = "z2") -> torch.Tensor:
    """Noise vectors [B, n_sites, 2] with E[xi xi^dag] = 1, chain b from rngs[b] only.

    z2: (+-1 +- i)/sqrt 2 per component (rng.integers(0, 2, (n, 2, 2))), |xi|^2 = 1 exactly, so the diagonal
    of M^-1 adds no variance; gaussian: (re + i im)/sqrt 2 from rng.standard_normal((n, 2, 2)).
    """
    if kind == "z2":
        draws = np.stack([1.0 - 2.0 * rng.integers(0, 2, (n_sites, 2, 2)) for rng in rngs]) / np.sqrt(2.0)
        return torch.from_numpy(draws[..., 0] + 1j * draws[..., 1]).to(CDTYPE)
    if kind == "gaussian":
        return _complex_gaussian(rngs, n_sites)
    raise ValueError(f"unknown noise kind {kind!r}; expected one of {NOISE_KINDS}")


def pbp_noise(
    links: torch.Tensor,
    lattice: Lattice4D,
    mass: float,
    n_flavors: int,
    rngs: Sequence[np.random.Generator],
    n_noise: int = 1,
    kind: str = "z2",
    tol: float = 1e-10,
    max_iter: int = 10_000,
) -> torch.Tensor:
    """Stochastic chiral condensate: n_noise independent unbiased estimates per chain, [B, n_noise].

    Each is (Nf/4) 2m Re(xi^dag M_ee^-1 xi) / V with xi on the even sites (complex Z2 noise by default, or
    complex Gaussian; E[xi xi^dag] = 1 either way, so E = (Nf/4) 2m Tr M_ee^-1 / V exactly). Their mean over the
    last axis is the estimate and their spread its error. Chain b draws its n_noise vectors, in order, from
    rngs[b]; all systems are solved together by CG, each converging on its own.
    """
    batch, vh = links.shape[0], lattice.half_volume
    xi = torch.stack([draw_noise(rngs, vh, kind) for _ in range(n_noise)], dim=1)  # [B, n_noise, Ve, 2]
    xi = xi.reshape(batch * n_noise, vh, 2)
    h = hops(links, lattice).select(torch.arange(batch).repeat_interleave(n_noise))
    x, _ = conjugate_gradient(_MeeOn(h, mass), xi, tol, max_iter)
    return (0.25 * n_flavors * 2.0 * mass / lattice.volume) * _vdot(xi, x).real.reshape(batch, n_noise)
