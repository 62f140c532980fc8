"""Physics core of the SU(2) + staggered system (DESIGN §9): conventions, invariances, forces, batching, HMC.

Tiny lattices (2^4, 4x4x2x2, 4^4) and fixed seeds, so the whole file runs in seconds on one core.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from slmc_hpc.core.integrators import integrate
from slmc_hpc.systems.su2_staggered import gauge as G
from slmc_hpc.systems.su2_staggered import links as L
from slmc_hpc.systems.su2_staggered import staggered as S
from slmc_hpc.systems.su2_staggered.lattice import Lattice4D

BETA, MASS, NF = 2.7, 0.3, 4
PBP_FREE_4444 = 0.376392  # DESIGN §9: free field, 4^4, m = 0.3, Nf = 4


def rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, b]) for b in range(n)]


def rough_links(lat: Lattice4D, seed: int, n: int, spread: float = 0.7) -> torch.Tensor:
    """exp(spread * random algebra) per link: disordered but not Haar, the regime of an HMC run at beta ~ 2-3."""
    p = L.draw_momenta(rngs(seed, n), lat.volume)
    return L.exp_algebra(p, spread)


def exp_t(a: int, s: float) -> torch.Tensor:
    """exp(s T_a) as a 2x2 matrix."""
    return L.exp_algebra(torch.eye(3, dtype=torch.float64)[a], s)


def moved(links: torch.Tensor, b: int, mu: int, n: int, a: int, s: float) -> torch.Tensor:
    """links with U_mu(n) of chain b replaced by exp(s T_a) U_mu(n)."""
    out = links.clone()
    out[b, mu, n] = exp_t(a, s) @ links[b, mu, n]
    return out


# ---------------------------------------------------------------------------------------------------- lattice


def test_lattice_tables() -> None:
    lat = Lattice4D((4, 2, 2, 6))
    assert lat.volume == 96 and lat.half_volume == 48 and lat.spatial_volume == 16
    n = torch.arange(lat.volume)
    x, y, z, t = lat.coords.unbind(1)
    assert torch.equal(n, x + 4 * (y + 2 * (z + 2 * t)))
    for mu in range(4):
        assert torch.equal(lat.bwd[mu, lat.fwd[mu]], n)
        step = lat.coords[lat.fwd[mu]] - lat.coords
        assert torch.equal(step[:, mu] % lat.shape[mu], torch.ones_like(n))
    assert torch.equal(lat.eta[1], (-1.0) ** x.double())
    assert torch.equal(lat.eta[3], (-1.0) ** (x + y + z).double())
    assert torch.equal(lat.bc_fwd[3], torch.where(t == 5, -1.0, 1.0).double())
    assert torch.equal(lat.bc_bwd[3], torch.where(t == 0, -1.0, 1.0).double())
    assert bool((lat.bc_fwd[:3] == 1).all() and (lat.bc_bwd[:3] == 1).all())
    assert bool((lat.parity[lat.even] == 0).all() and (lat.parity[lat.odd] == 1).all())
    assert torch.equal(lat.even[lat.half_index[lat.even]], lat.even)
    for bad in [(4, 4, 4, 3), (4, 4, 4, 0), (4, 4, 4), (1, 2, 2, 2)]:
        with pytest.raises(ValueError):
            Lattice4D(bad)


def test_su2_helpers() -> None:
    lat = Lattice4D((2, 2, 2, 2))
    u = L.haar_links(lat, rngs(1, 2))
    eye = torch.eye(2, dtype=torch.complex128)
    assert torch.allclose(L.mm(u, L.dagger(u)), eye.expand_as(u), atol=1e-14)
    assert torch.allclose(torch.linalg.det(u), torch.ones(u.shape[:-2], dtype=torch.complex128), atol=1e-14)
    t = L.generators()
    sigma = torch.tensor([[[0, 1], [1, 0]], [[0, -1j], [1j, 0]], [[1, 0], [0, -1]]], dtype=torch.complex128)
    assert torch.allclose(t, 0.5j * sigma, atol=0)
    p = L.draw_momenta(rngs(2, 2), lat.volume)
    assert p.shape == (2, 4, lat.volume, 3) and p.dtype == torch.float64
    assert torch.allclose(L.algebra(p), torch.einsum("...a,aij->...ij", p.to(torch.complex128), t), atol=1e-15)
    for eps in (0.37, -1.3):
        exact = torch.linalg.matrix_exp(eps * L.algebra(p))
        assert torch.allclose(L.exp_algebra(p, eps), exact, atol=1e-13)
    assert torch.equal(L.exp_algebra(torch.zeros(3, dtype=torch.float64)), eye)
    # re-unitarisation: SU(2) is a fixed point; a perturbed matrix goes back to SU(2) (det 1, not a U(2) phase)
    assert torch.allclose(L.project_su2(u), u, atol=1e-15)
    w = L.project_su2(1.01j * u + 1e-3 * L.algebra(p))
    assert torch.allclose(L.mm(w, L.dagger(w)), eye.expand_as(w), atol=1e-14)
    assert torch.allclose(torch.linalg.det(w), torch.ones(w.shape[:-2], dtype=torch.complex128), atol=1e-14)
    # the force read-out: Re tr(T_a W)
    w = torch.randn(5, 2, 2, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    expect = torch.einsum("aij,nji->na", t, w).real
    assert torch.allclose(L.trace_generators(w), expect, atol=1e-15)


# ------------------------------------------------------------------------------------------------ free field


def test_free_field_pbp_dense_and_noise() -> None:
    lat = Lattice4D((4, 4, 4, 4))
    u = L.identity_links(lat, 1)
    pbp = S.pbp_dense(u, lat, MASS, NF)
    assert abs(pbp.item() - PBP_FREE_4444) < 1e-6
    # the lattice sum of DESIGN §9, antiperiodic in t
    k = [2 * np.pi * np.arange(4) / 4] * 3 + [2 * np.pi * (np.arange(4) + 0.5) / 4]
    s2 = sum(np.sin(q) ** 2 for q in np.meshgrid(*k, indexing="ij"))
    assert abs(pbp.item() - 2 * np.mean(MASS / (MASS**2 + s2))) < 1e-12
    assert torch.allclose(S.pbp_dense(u, lat, MASS, 2), 0.5 * pbp, rtol=1e-15)
    for kind in S.NOISE_KINDS:
        samples = S.pbp_noise(u, lat, MASS, NF, rngs(3, 1), n_noise=256, kind=kind)[0].numpy()
        err = samples.std(ddof=1) / np.sqrt(samples.size)
        assert abs(samples.mean() - PBP_FREE_4444) < 4 * err, (kind, samples.mean(), err)
    # the noise draws: unit variance per component, Z2 of unit modulus
    xi = S.draw_noise(rngs(4, 2), 4096, "z2")
    assert torch.allclose(xi.abs(), torch.ones(xi.shape, dtype=torch.float64), atol=1e-15)
    eta = S.draw_noise(rngs(4, 2), 4096, "gaussian")
    assert abs((eta.abs() ** 2).mean().item() - 1.0) < 0.03
    with pytest.raises(ValueError):
        S.draw_noise(rngs(4, 1), 4, "uniform")


# -------------------------------------------------------------------------------------------------- operator


@pytest.mark.parametrize("shape", [(2, 2, 2, 2), (4, 4, 2, 2)])
def test_dhop_structure_and_logdet(shape: tuple[int, int, int, int]) -> None:
    lat = Lattice4D(shape)
    u = L.haar_links(lat, rngs(5, 2))
    d = S.dense_dhop(u, lat)
    assert torch.allclose(d, -L.dagger(d), atol=1e-15, rtol=0)
    par = lat.parity.repeat_interleave(2)
    ev, od = par == 0, par == 1
    assert d[:, ev][:, :, ev].abs().max() == 0 and d[:, od][:, :, od].abs().max() == 0
    # blocks, matrix-free and dense agree
    deo = S.dense_deo(u, lat)
    assert torch.equal(deo, d[:, ev][:, :, od])
    psi = torch.randn(2, lat.volume, 2, dtype=torch.complex128, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(S.apply_dhop(u, lat, psi), (d @ psi.reshape(2, -1, 1)).reshape(psi.shape), atol=1e-14)
    mee = S.dense_mee(u, lat, MASS)
    eye = torch.eye(lat.volume, dtype=torch.complex128)
    assert torch.allclose(mee, MASS**2 * eye + deo @ L.dagger(deo), atol=1e-14)
    pe = psi[:, lat.even]
    assert torch.allclose(S.apply_mee(u, lat, MASS, pe), (mee @ pe.reshape(2, -1, 1)).reshape(pe.shape), atol=1e-14)
    doe_pe = (-L.dagger(deo) @ pe.reshape(2, -1, 1)).reshape(pe.shape)
    assert torch.allclose(S.apply_doe(u, lat, pe), doe_pe, atol=1e-14)
    # det D = det M_ee; the exact pbp is (Nf/4) Re Tr D^-1 / V
    full = MASS * torch.eye(2 * lat.volume, dtype=torch.complex128) + d
    sign, logabs = torch.linalg.slogdet(full)
    assert torch.allclose(sign, torch.ones_like(sign), atol=1e-10)
    assert torch.allclose(S.logdet_mee(u, lat, MASS), logabs, atol=1e-10, rtol=0)
    trace = torch.diagonal(torch.linalg.inv(full), dim1=-2, dim2=-1).sum(-1).real
    assert torch.allclose(S.pbp_dense(u, lat, MASS, NF), trace / lat.volume, atol=1e-12)


def test_cg_solves_and_fails_loudly() -> None:
    lat = Lattice4D((4, 4, 2, 2))
    u = torch.cat([rough_links(lat, 6, 1, 0.3), L.haar_links(lat, rngs(6, 1))])
    b = torch.randn(2, lat.half_volume, 2, dtype=torch.complex128, generator=torch.Generator().manual_seed(2))
    x, iters = S.solve_mee(u, lat, MASS, b, tol=1e-12)
    exact = torch.cholesky_solve(b.reshape(2, -1, 1), S.mee_cholesky(u, lat, MASS)).reshape(b.shape)
    assert torch.allclose(x, exact, atol=1e-10)
    assert iters[0] != iters[1]  # the chains converge on their own
    res = S.apply_mee(u, lat, MASS, x) - b
    assert bool((res.flatten(1).norm(dim=1) / b.flatten(1).norm(dim=1) < 1e-11).all())
    x0, it0 = S.solve_mee(u, lat, MASS, torch.zeros_like(b))
    assert torch.equal(x0, torch.zeros_like(b)) and torch.equal(it0, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(S.CGNotConverged, match="chains"):
        S.solve_mee(u, lat, MASS, b, tol=1e-12, max_iter=3)


# ------------------------------------------------------------------------------------------ gauge invariance


def test_gauge_invariance() -> None:
    lat = Lattice4D((4, 4, 2, 2))
    u = L.haar_links(lat, rngs(7, 2))
    g = L.random_gauge_transformation(lat, rngs(8, 2))
    v = L.gauge_transform_links(u, g, lat)
    assert not torch.allclose(u, v)
    phi = S.draw_pseudofermion(u, lat, MASS, rngs(9, 2))
    phi_g = L.gauge_transform_field(phi, g, lat.even)
    pairs = [
        (G.gauge_action(u, lat, BETA), G.gauge_action(v, lat, BETA)),
        (S.fermion_action_dense(u, lat, MASS, NF), S.fermion_action_dense(v, lat, MASS, NF)),
        (S.pseudofermion_action_dense(u, lat, MASS, phi), S.pseudofermion_action_dense(v, lat, MASS, phi_g)),
        (S.pseudofermion_action(u, lat, MASS, phi, 1e-14)[0], S.pseudofermion_action(v, lat, MASS, phi_g, 1e-14)[0]),
        (G.plaquette(u, lat), G.plaquette(v, lat)),
        (G.polyakov(u, lat), G.polyakov(v, lat)),
        (S.pbp_dense(u, lat, MASS, NF), S.pbp_dense(v, lat, MASS, NF)),
    ]
    for i, (a, b) in enumerate(pairs):
        assert torch.allclose(a, b, atol=1e-12 * max(1.0, a.abs().max().item()), rtol=0), (i, a, b)
    # observables of the cold start
    one = L.identity_links(lat, 1)
    assert G.plaquette(one, lat).item() == 1.0 and G.polyakov(one, lat).item() == 1.0
    assert G.gauge_action(one, lat, BETA).item() == 0.0


def test_observable_conventions() -> None:
    """Plaquette from the explicit loop, Polyakov from the explicit time-ordered product."""
    lat = Lattice4D((2, 2, 2, 4))
    u = L.haar_links(lat, rngs(10, 1))
    n, mu, nu = 5, 1, 3
    f = lat.fwd
    plaq = u[0, mu, n] @ u[0, nu, f[mu, n]] @ L.dagger(u[0, mu, f[nu, n]]) @ L.dagger(u[0, nu, n])
    assert torch.allclose(G.plaquettes(u, lat)[0, G.PLANES.index((mu, nu)), n], plaq, atol=1e-15)
    lines = []
    for s in range(lat.spatial_volume):
        line, site = torch.eye(2, dtype=torch.complex128), s
        for _ in range(lat.shape[3]):
            line, site = line @ u[0, 3, site], f[3, site]
        lines.append(0.5 * torch.trace(line).real)
    assert abs(G.polyakov(u, lat).item() - float(np.mean(lines))) < 1e-15
    # the staple sum reproduces the action's dependence on one link
    a = G.staples(u, lat)[0, mu, n]
    s0 = G.gauge_action(u, lat, BETA)
    w = moved(u, 0, mu, n, 0, 0.3)
    ds = G.gauge_action(w, lat, BETA) - s0
    expect = -0.5 * BETA * (torch.trace(w[0, mu, n] @ a).real - torch.trace(u[0, mu, n] @ a).real)
    assert abs(ds.item() - expect.item()) < 1e-12


# -------------------------------------------------------------------------------------------------- forces


def _check_force(action, force: torch.Tensor, links: torch.Tensor, picks, h: float = 1e-5, rtol: float = 1e-7) -> None:
    scale = force.abs().max().item()
    for b, mu, n, a in picks:
        fd = (action(moved(links, b, mu, n, a, h))[b] - action(moved(links, b, mu, n, a, -h))[b]).item() / (2 * h)
        assert abs(fd - force[b, mu, n, a].item()) < rtol * scale, (b, mu, n, a, fd, force[b, mu, n, a].item())


PICKS = [(0, 0, 0, 0), (0, 3, 5, 2), (1, 1, 12, 1), (1, 3, 31, 0), (0, 2, 18, 1), (1, 0, 27, 2)]


def test_gauge_force() -> None:
    lat = Lattice4D((4, 4, 2, 2))
    u = L.haar_links(lat, rngs(11, 2))
    _check_force(lambda w: G.gauge_action(w, lat, BETA), G.gauge_force(u, lat, BETA), u, PICKS)


@pytest.mark.parametrize("shape", [(2, 2, 2, 2), (4, 4, 2, 2)])
def test_dense_fermion_force(shape: tuple[int, int, int, int]) -> None:
    lat = Lattice4D(shape)
    u = L.haar_links(lat, rngs(12, 2))
    picks = [(b, mu, n % lat.volume, a) for b, mu, n, a in PICKS]
    for nf in (4, 2):
        force = S.fermion_force_dense(u, lat, MASS, nf)
        _check_force(lambda w, nf=nf: S.fermion_action_dense(w, lat, MASS, nf), force, u, picks)


def test_pseudofermion_force() -> None:
    lat = Lattice4D((4, 4, 2, 2))
    u = L.haar_links(lat, rngs(13, 2))
    phi = S.draw_pseudofermion(u, lat, MASS, rngs(14, 2))
    force, iters = S.pseudofermion_force(u, lat, MASS, phi, tol=1e-13)
    assert bool((iters > 0).all())
    _check_force(lambda w: S.pseudofermion_action_dense(w, lat, MASS, phi), force, u, PICKS)
    # the CG action agrees with the dense one
    s_cg, _ = S.pseudofermion_action(u, lat, MASS, phi, tol=1e-13)
    assert torch.allclose(s_cg, S.pseudofermion_action_dense(u, lat, MASS, phi), rtol=1e-11, atol=0)


def test_pseudofermion_heat_bath_covariance() -> None:
    """<phi phi^dag> = M_ee: E[S_f] = E[phi^dag M^-1 phi] = Tr 1 = 2 Ve, and E[pf force] = dense Nf=4 force."""
    lat = Lattice4D((2, 2, 2, 2))
    u = L.haar_links(lat, rngs(15, 1)).expand(400, -1, -1, -1, -1).contiguous()
    phi = S.draw_pseudofermion(u, lat, MASS, rngs(16, 400))
    s = S.pseudofermion_action_dense(u, lat, MASS, phi).numpy()
    assert abs(s.mean() - 2 * lat.half_volume) < 4 * s.std() / np.sqrt(s.size)
    emp = torch.einsum("bi,bj->ij", phi.reshape(400, -1), phi.reshape(400, -1).conj()) / 400
    assert (emp - S.dense_mee(u[:1], lat, MASS)[0]).abs().max() < 0.35


def test_forces_agree_with_autograd() -> None:
    """The analytic forces equal autograd through exp(w.T) U at w = 0: the code is differentiable end to end.

    For the pseudofermions, -Re X^dag M_ee(U) X with X = M_ee^-1 phi held fixed has the force of S_f.
    """
    lat = Lattice4D((2, 2, 2, 2))
    u = L.haar_links(lat, rngs(27, 2))
    phi = S.draw_pseudofermion(u, lat, MASS, rngs(28, 2))
    x, _ = S.solve_mee(u, lat, MASS, phi, tol=1e-14)

    def surrogate(w: torch.Tensor) -> torch.Tensor:
        return -(x.conj() * S.apply_mee(w, lat, MASS, x)).flatten(1).sum(1).real

    for action, force in [
        (lambda w: G.gauge_action(w, lat, BETA), G.gauge_force(u, lat, BETA)),
        (lambda w: S.fermion_action_dense(w, lat, MASS, NF), S.fermion_force_dense(u, lat, MASS, NF)),
        (surrogate, S.pseudofermion_force_from_solution(u, lat, x)),
    ]:
        omega = torch.zeros(2, 4, lat.volume, 3, dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(action(L.mm(L.exp_algebra(omega), u)).sum(), omega)
        assert torch.allclose(grad, force, atol=1e-12, rtol=1e-10)


# ------------------------------------------------------------------------------------------ batch independence


def _each_chain_alone(fn, *batched_args, n: int) -> None:
    whole = fn(*batched_args)
    whole = whole if isinstance(whole, tuple) else (whole,)
    for b in range(n):
        alone = fn(*[x[b : b + 1] if isinstance(x, torch.Tensor) else x for x in batched_args])
        alone = alone if isinstance(alone, tuple) else (alone,)
        for w, a in zip(whole, alone, strict=True):
            assert torch.equal(w[b : b + 1], a), (getattr(fn, "__name__", fn), b)


def test_batch_independence() -> None:
    lat = Lattice4D((4, 4, 2, 2))
    n = 3
    u = torch.cat([rough_links(lat, 17, 1, 0.2), L.haar_links(lat, rngs(17, 2))])
    phi = S.draw_pseudofermion(u, lat, MASS, rngs(18, n))
    psi_o = phi.flip(1)
    psi = torch.cat([phi, psi_o], dim=1)
    g = L.random_gauge_transformation(lat, rngs(19, n))
    p = L.draw_momenta(rngs(19, n), lat.volume)
    for fn, args in [
        (L.exp_algebra, (p, 0.3)),
        (L.project_su2, (u,)),
        (G.plaquettes, (u, lat)),
        (G.gauge_action, (u, lat, BETA)),
        (G.plaquette, (u, lat)),
        (G.polyakov, (u, lat)),
        (G.staples, (u, lat)),
        (G.gauge_force, (u, lat, BETA)),
        (L.gauge_transform_links, (u, g, lat)),
        (S.apply_deo, (u, lat, psi_o)),
        (S.apply_doe, (u, lat, phi)),
        (S.apply_dhop, (u, lat, psi)),
        (S.apply_mee, (u, lat, MASS, phi)),
        (S.dense_deo, (u, lat)),
        (S.dense_dhop, (u, lat)),
        (S.dense_mee, (u, lat, MASS)),
        (S.mee_cholesky, (u, lat, MASS)),
        (S.logdet_mee, (u, lat, MASS)),
        (S.fermion_action_dense, (u, lat, MASS, NF)),
        (S.fermion_force_dense, (u, lat, MASS, NF)),
        (S.pbp_dense, (u, lat, MASS, NF)),
        (S.pseudofermion_action_dense, (u, lat, MASS, phi)),
        (S.solve_mee, (u, lat, MASS, phi)),
        (S.pseudofermion_action, (u, lat, MASS, phi)),
        (S.pseudofermion_force, (u, lat, MASS, phi)),
        (S.pseudofermion_force_from_solution, (u, lat, phi)),
    ]:
        _each_chain_alone(fn, *args, n=n)
    iters = S.solve_mee(u, lat, MASS, phi)[1]
    assert len(set(iters.tolist())) > 1  # the masking was exercised
    # random draws: chain b's draw comes from rngs[b] alone
    for draw in [
        lambda r: L.haar_links(lat, r),
        lambda r: L.draw_momenta(r, lat.volume),
        lambda r: L.random_gauge_transformation(lat, r),
        lambda r: S.draw_noise(r, lat.half_volume, "z2"),
        lambda r: S.draw_noise(r, lat.half_volume, "gaussian"),
    ]:
        whole = draw(rngs(20, n))
        for b in range(n):
            assert torch.equal(whole[b : b + 1], draw([np.random.default_rng([20, b])]))
    whole = S.draw_pseudofermion(u, lat, MASS, rngs(21, n))
    noise = S.pbp_noise(u, lat, MASS, NF, rngs(22, n), n_noise=3)
    for b in range(n):
        one = [np.random.default_rng([21, b])]
        assert torch.equal(whole[b : b + 1], S.draw_pseudofermion(u[b : b + 1], lat, MASS, one))
        one = [np.random.default_rng([22, b])]
        assert torch.equal(noise[b : b + 1], S.pbp_noise(u[b : b + 1], lat, MASS, NF, one, n_noise=3))


# ------------------------------------------------------------------------------------------------------- HMC


def exact_action(u: torch.Tensor, lat: Lattice4D) -> torch.Tensor:
    return G.gauge_action(u, lat, BETA) + S.fermion_action_dense(u, lat, MASS, NF)


def exact_force(u: torch.Tensor, lat: Lattice4D) -> torch.Tensor:
    return G.gauge_force(u, lat, BETA) + S.fermion_force_dense(u, lat, MASS, NF)


def hamiltonian(u: torch.Tensor, p: torch.Tensor, lat: Lattice4D) -> torch.Tensor:
    return 0.5 * (p * p).flatten(1).sum(1) + exact_action(u, lat)


def trajectory(u: torch.Tensor, p: torch.Tensor, lat: Lattice4D, kind: str, n_steps: int, eps: float):
    """A tiny local MD trajectory: kick p <- p - eps F(U), drift U <- exp(eps P) U."""
    state = {"u": u, "p": p}

    def kick(t: float) -> None:
        state["p"] = state["p"] - t * exact_force(state["u"], lat)

    def drift(t: float) -> None:
        state["u"] = L.mm(L.exp_algebra(state["p"], t), state["u"])

    integrate(kind, n_steps, eps, kick, drift)
    return state["u"], state["p"]


@pytest.mark.parametrize("kind", ["leapfrog", "omelyan"])
def test_hmc_reversibility(kind: str) -> None:
    lat = Lattice4D((2, 2, 2, 2))
    u0 = rough_links(lat, 23, 2)
    p0 = L.draw_momenta(rngs(24, 2), lat.volume)
    u1, p1 = trajectory(u0, p0, lat, kind, 10, 0.1)
    assert (u1 - u0).abs().max() > 0.1
    u2, p2 = trajectory(u1, -p1, lat, kind, 10, 0.1)
    assert (u2 - u0).abs().max() < 1e-12
    assert (p2 + p0).abs().max() < 1e-12


def test_hmc_dh_scales_as_eps_squared() -> None:
    lat = Lattice4D((2, 2, 2, 2))
    n_chains, tau = 4, 1.0
    u0 = rough_links(lat, 25, n_chains)
    p0 = L.draw_momenta(rngs(26, n_chains), lat.volume)
    h0 = hamiltonian(u0, p0, lat)
    steps = np.array([8, 16, 32])
    fits = {}
    for kind in ("leapfrog", "omelyan"):
        dh = []
        for n in steps:
            u1, p1 = trajectory(u0, p0, lat, kind, int(n), tau / n)
            dh.append((hamiltonian(u1, p1, lat) - h0).abs().mean().item())
        slope, intercept = np.polyfit(np.log(tau / steps), np.log(dh), 1)
        assert 1.8 < slope < 2.2, (kind, slope, dh)
        fits[kind] = np.exp(intercept)
    assert fits["omelyan"] < fits["leapfrog"], fits
