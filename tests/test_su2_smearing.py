"""Loop classes, their staples, and the gauge-covariant networks (stout, CASK) of the SU(2) system (docs/design.md §9).

Direct loop-by-loop evaluations, finite differences of loop sums and network actions, gauge covariance, the
zero-parameter limits and batch independence, on 4x4x2x2 and 2^4 lattices with fixed seeds (seconds on one core).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from slmc_hpc.systems.su2_staggered import gauge as G
from slmc_hpc.systems.su2_staggered import links as L
from slmc_hpc.systems.su2_staggered import loops as LP
from slmc_hpc.systems.su2_staggered.lattice import Lattice4D
from slmc_hpc.systems.su2_staggered.smearing import (
    CaskLayer,
    CaskNetwork,
    StoutLayer,
    StoutNetwork,
    lie_force,
)

SHAPE = (4, 4, 2, 2)
ALL = ("plaquette", "rectangle", "chair", "polyakov")
EVERY = ALL + ("polyakov_x", "polyakov_y", "polyakov_z")


def rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng([seed, b]) for b in range(n)]


def rough_links(lat: Lattice4D, seed: int, n: int, spread: float = 0.8) -> torch.Tensor:
    """exp(spread * random algebra) per link: disordered, but not Haar."""
    return L.exp_algebra(L.draw_momenta(rngs(seed, n), lat.volume), spread)


def randomise(module: torch.nn.Module, seed: int, scale: float = 0.06, lead: float = 0.1) -> torch.nn.Module:
    """Every parameter uniform in [-scale, scale] (the plaquette rho larger), drawn with numpy."""
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-scale, scale, p.shape)))
            p[0] += lead  # the first class is the plaquette in these tests: a sizeable smearing
    return module


def moved(links: torch.Tensor, p: torch.Tensor, s: float) -> torch.Tensor:
    """exp(s sum_a p_a T_a) U for every link."""
    return L.mm(L.exp_algebra(p, s), links)


def lie_fd(scalar, links: torch.Tensor, p: torch.Tensor, h: float = 1e-4) -> torch.Tensor:
    """d/ds scalar(exp(s P) U) at s = 0 per chain: central differences at h and 2h, Richardson-combined (O(h^4))."""
    with torch.no_grad():
        d1 = (scalar(moved(links, p, h)) - scalar(moved(links, p, -h))) / (2 * h)
        d2 = (scalar(moved(links, p, 2 * h)) - scalar(moved(links, p, -2 * h))) / (4 * h)
        return (4 * d1 - d2) / 3


def direction(lat: Lattice4D, seed: int, n: int) -> torch.Tensor:
    return L.draw_momenta(rngs(seed, n), lat.volume)


# ------------------------------------------------------------------------------ direct (slow) loop evaluation


def unit_steps(*segments):
    return [(d, 1 if k > 0 else -1) for d, k in segments for _ in range(abs(k))]


def direct_loops(links: torch.Tensor, shape, loops, sites=None) -> np.ndarray:
    """Re tr of every loop from every site by explicit coordinates (no lattice tables): [B, n_loops, n_sites]."""
    u = links.numpy()
    lx, ly, lz, lt = shape

    def index(x):
        return x[0] + lx * (x[1] + ly * (x[2] + lz * x[3]))

    if sites is None:
        sites = [(x, y, z, t) for t in range(lt) for z in range(lz) for y in range(ly) for x in range(lx)]
    out = np.zeros((u.shape[0], len(loops), len(sites)))
    for j, loop in enumerate(loops):
        for k, site in enumerate(sites):
            x = list(site)
            m = np.broadcast_to(np.eye(2, dtype=complex), (u.shape[0], 2, 2))
            for d, sign in loop:
                if sign > 0:
                    m = m @ u[:, d, index(x)]
                    x[d] = (x[d] + 1) % shape[d]
                else:
                    x[d] = (x[d] - 1) % shape[d]
                    m = m @ u[:, d, index(x)].conj().swapaxes(-1, -2)
            out[:, j, k] = np.trace(m, axis1=-2, axis2=-1).real
    return out


def direct_class_sum(links: torch.Tensor, shape, cls: str) -> np.ndarray:
    """The class sum from the loop lists written out here (independently of loops.py)."""
    pairs = [(mu, nu) for mu in range(4) for nu in range(mu + 1, 4)]
    if cls == "plaquette":
        loops = [unit_steps((mu, 1), (nu, 1), (mu, -1), (nu, -1)) for mu, nu in pairs]
    elif cls == "rectangle":
        loops = [unit_steps((mu, 1), (nu, 2), (mu, -1), (nu, -2)) for mu, nu in pairs]
        loops += [unit_steps((mu, 2), (nu, 1), (mu, -2), (nu, -1)) for mu, nu in pairs]
    elif cls == "chair":
        loops = [
            unit_steps((a, 1), (b, 1), (c, 1), (a, -1), (c, -1), (b, -1))
            for a, b, c in itertools.permutations(range(4), 3)
        ]
    else:
        mu = {"polyakov": 3, "polyakov_x": 0, "polyakov_y": 1, "polyakov_z": 2}[cls]
        ranges = [range(e) for e in shape]
        ranges[mu] = range(1)
        sites = [s for s in itertools.product(*ranges)]
        return direct_loops(links, shape, [unit_steps((mu, shape[mu]))], sites).sum(axis=(1, 2))
    return direct_loops(links, shape, loops).sum(axis=(1, 2))


# ------------------------------------------------------------------------------------------------- loop classes


def test_class_shapes_follow_the_public_code() -> None:
    lat = Lattice4D(SHAPE)
    assert [len(LP.loop_shapes(c, lat)) for c in ALL] == [6, 12, 24, 1]
    chairs = LP.loop_shapes("chair", lat)
    # 24 distinct bent loops: each visits 6 distinct corners, spans 3 directions, and no two share their corner set
    corners = set()
    for shape in chairs:
        x, pts = np.zeros(4, int), []
        for d, s in shape:
            x[d] += s
            pts.append(tuple(x))
        assert x.tolist() == [0, 0, 0, 0] and len(set(pts)) == 6
        corners.add(frozenset(pts))
    assert len(corners) == 24
    assert [LP.multiplicity(c, lat) for c in EVERY] == [1, 1, 1, 2, 4, 4, 2]
    with pytest.raises(ValueError):
        LP.check_classes(["plaquette", "twisted"])


@pytest.mark.parametrize("cls", EVERY)
def test_loop_sums_match_direct_evaluation(cls: str) -> None:
    lat = Lattice4D(SHAPE)
    links = rough_links(lat, 11, 2)
    assert np.allclose(LP.loop_sum(links, lat, cls).numpy(), direct_class_sum(links, SHAPE, cls), rtol=0, atol=1e-11)


def test_loop_features_and_gauge_invariance() -> None:
    lat = Lattice4D(SHAPE)
    links = L.haar_links(lat, rngs(12, 2))
    feats = LP.loop_features(links, lat, EVERY)
    assert feats.shape == (2, len(EVERY))
    assert torch.allclose(feats[:, 0], 6 * lat.volume * G.plaquette(links, lat) * 2, rtol=0, atol=1e-11)
    assert torch.allclose(feats[:, 3], 2 * lat.spatial_volume * G.polyakov(links, lat), rtol=0, atol=1e-12)
    g = L.random_gauge_transformation(lat, rngs(13, 2))
    moved_feats = LP.loop_features(L.gauge_transform_links(links, g, lat), lat, EVERY)
    assert torch.allclose(moved_feats, feats, rtol=0, atol=1e-11)
    free = LP.loop_features(L.identity_links(lat, 1), lat, EVERY)[0]
    spatial = [lat.volume // e for e in (lat.shape[3], lat.shape[0], lat.shape[1], lat.shape[2])]
    assert free.tolist() == [2.0 * n for n in [6 * lat.volume, 12 * lat.volume, 24 * lat.volume, *spatial]]


@pytest.mark.parametrize("cls", EVERY)
def test_staples_are_the_loop_sum_derivative(cls: str) -> None:
    """d/ds LoopSum(exp(s P) U) = sum_{mu, n, a} p_a Re tr(T_a U V) / multiplicity (all links moved at once), and the
    single-link derivatives of a few links; V covariant as g(n+mu) V g(n)^dag."""
    lat = Lattice4D(SHAPE)
    links = rough_links(lat, 21, 2)
    p = direction(lat, 22, 2)
    force = LP.loop_sum_derivative(links, lat, cls)
    predicted = (p * force).sum(dim=(1, 2, 3))
    fd = lie_fd(lambda u: LP.loop_sum(u, lat, cls), links, p)
    assert torch.allclose(predicted, fd, rtol=1e-8, atol=1e-8 * fd.abs().max().item())
    for b, mu, n, a in [(0, 3, 5, 0), (1, 0, 17, 2), (1, 2, 40, 1)]:
        q = torch.zeros_like(p)
        q[b, mu, n, a] = 1.0
        single = lie_fd(lambda u: LP.loop_sum(u, lat, cls), links, q)[b]
        assert abs(single - force[b, mu, n, a]) < 1e-8 * max(1.0, abs(float(single)))
    g = L.random_gauge_transformation(lat, rngs(23, 2))
    staple = LP.class_staples(links, lat, cls)
    expected = L.mm(L.mm(g[:, lat.fwd], staple), L.dagger(g[:, None]))
    assert torch.allclose(LP.class_staples(L.gauge_transform_links(links, g, lat), lat, cls), expected, atol=1e-12)


def test_plaquette_staples_reuse_gauge_and_agree_with_the_generic_construction() -> None:
    lat = Lattice4D(SHAPE)
    links = rough_links(lat, 31, 2)
    assert torch.equal(LP.class_staples(links, lat, "plaquette"), G.staples(links, lat))
    generic = LP.pair_to_matrix(LP.staple_pair(LP.first_rows(links), lat, "plaquette"))  # what the networks use
    assert torch.allclose(generic, G.staples(links, lat), rtol=0, atol=1e-13)


def test_pair_algebra_is_the_matrix_algebra_on_the_real_span() -> None:
    """(alpha, beta) pairs: products, adjoints, traces and algebra coordinates equal those of the 2x2 matrices, for
    real combinations of SU(2) matrices (the staple sums)."""
    lat = Lattice4D((2, 2, 2, 2))
    u = L.haar_links(lat, rngs(35, 2))
    w = 0.3 * u + 1.7 * L.haar_links(lat, rngs(36, 2))  # in the span, not in SU(2)
    x, y = LP.link_pair(u), LP.link_pair(w)
    assert torch.allclose(LP.pair_to_matrix(x), u, rtol=0, atol=1e-15)
    assert torch.allclose(LP.pair_to_matrix(LP.pair_mul(x, y)), L.mm(u, w), rtol=0, atol=1e-14)
    assert torch.allclose(LP.pair_to_matrix(LP.pair_dagger(y)), L.dagger(w), rtol=0, atol=1e-15)
    assert torch.allclose(LP.pair_re_trace(LP.pair_mul(y, x)), L.re_trace(L.mm(w, u)), rtol=0, atol=1e-14)
    assert torch.allclose(LP.pair_algebra_coordinates(y), L.trace_generators(w), rtol=0, atol=1e-15)


@pytest.mark.parametrize("s", [1, 2, 3])
def test_rectangle_staples(s: int) -> None:
    """Re tr(U_mu upper_{mu nu s}) is the 1 x s loop at n and Re tr(U_mu lower) the one at n - s nu, site by site;
    for s = 1, upper + lower summed over nu is gauge.staples; covariant like every staple."""
    lat = Lattice4D(SHAPE)
    links = rough_links(lat, 41, 2)
    up = LP.rectangle_staple(links, lat, s)
    down = LP.rectangle_staple(links, lat, s, lower=True)
    pairs = [(mu, nu) for mu in range(4) for nu in range(4) if nu != mu]
    loops = [unit_steps((mu, 1), (nu, s), (mu, -1), (nu, -s)) for mu, nu in pairs]
    direct = direct_loops(links, SHAPE, loops)  # [B, 12, V]
    got_up = L.re_trace(L.mm(links[:, :, None], up)).reshape(2, 12, lat.volume).numpy()
    got_down = L.re_trace(L.mm(links[:, :, None], down)).reshape(2, 12, lat.volume).numpy()
    assert np.allclose(got_up, direct, rtol=0, atol=1e-12)
    for j, (_, nu) in enumerate(pairs):
        shifted = lat.coords.clone()
        shifted[:, nu] = (shifted[:, nu] - s) % lat.shape[nu]
        n_minus = (shifted * torch.tensor([1, 4, 16, 32])).sum(dim=1).numpy()
        assert np.allclose(got_down[:, j], direct[:, j, n_minus], rtol=0, atol=1e-12)
    if s == 1:
        assert torch.allclose((up + down).sum(dim=2), G.staples(links, lat), rtol=0, atol=1e-13)
    g = L.random_gauge_transformation(lat, rngs(42, 2))
    expected = L.mm(L.mm(g[:, lat.fwd][:, :, None], up), L.dagger(g[:, None, None]))
    assert torch.allclose(LP.rectangle_staple(L.gauge_transform_links(links, g, lat), lat, s), expected, atol=1e-12)


# ----------------------------------------------------------------------------------------------------- networks


def networks(lat: Lattice4D, seed: int, classes=ALL):
    stout = randomise(StoutNetwork(lat, classes, 2), seed)
    # CASK smaller: its attention weights tan(...) grow steeply, O(1) is the regime of a trained network
    cask = randomise(CaskNetwork(lat, classes, 2, max_s=3), seed + 1, scale=0.03, lead=0.06)
    return {"stout": stout, "cask": cask}


def test_parameters_are_float64_and_zero_at_start() -> None:
    lat = Lattice4D(SHAPE)
    stout, cask = StoutNetwork(lat, ALL, 2), CaskNetwork(lat, ("plaquette",), 2)
    assert len(list(stout.parameters())) == 2 and len(list(cask.parameters())) == 8
    for p in [*stout.parameters(), *cask.parameters()]:
        assert isinstance(p, torch.nn.Parameter) and p.dtype == torch.float64 and not p.detach().any()
    assert [n for n, _ in cask.layers[0].named_parameters()] == ["stout.rho", "query.rho", "key.rho", "value.rho"]


def test_zero_parameters_are_the_identity_and_cask_at_zero_qk_is_stout() -> None:
    lat = Lattice4D(SHAPE)
    links = L.haar_links(lat, rngs(51, 2))
    assert torch.equal(StoutNetwork(lat, ALL, 2)(links), links)
    assert torch.equal(CaskNetwork(lat, ALL, 2)(links), links)
    cask = randomise(CaskNetwork(lat, ALL, 2), 52)
    stout = StoutNetwork(lat, ALL, 2)
    with torch.no_grad():
        for cask_layer, stout_layer in zip(cask.layers, stout.layers, strict=True):
            cask_layer.query.rho.zero_()
            cask_layer.key.rho.zero_()
            stout_layer.rho.copy_(cask_layer.stout.rho)
        assert not torch.equal(stout(links), links)
        assert torch.equal(cask(links), stout(links))
        assert not cask.layers[0].attention(links).any()


@pytest.mark.parametrize("kind", ["stout", "cask"])
def test_networks_are_gauge_covariant_and_stay_in_su2(kind: str) -> None:
    lat = Lattice4D(SHAPE)
    net = networks(lat, 61)[kind]
    links = L.haar_links(lat, rngs(62, 2))
    g = L.random_gauge_transformation(lat, rngs(63, 2))
    with torch.no_grad():
        out = net(links)
        expected = L.gauge_transform_links(out, g, lat)
        assert torch.allclose(net(L.gauge_transform_links(links, g, lat)), expected, rtol=0, atol=1e-12)
        assert (out - links).abs().max() > 0.1  # a real smearing, not the identity
        eye = torch.eye(2, dtype=torch.complex128)
        assert torch.allclose(L.mm(out, L.dagger(out)), eye.expand_as(out), rtol=0, atol=1e-13)
        assert torch.allclose(torch.linalg.det(out), torch.ones(out.shape[:3], dtype=out.dtype), atol=1e-13)
        if kind == "cask":
            layer = net.layers[0]
            weights = layer.attention(links)
            assert weights.shape == (2, 4, 3, 3, lat.volume) and weights.abs().max() > 1e-3
            moved_weights = layer.attention(L.gauge_transform_links(links, g, lat))
            assert torch.allclose(moved_weights, weights, rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["stout", "cask"])
def test_lie_force_through_networks_matches_finite_differences(kind: str) -> None:
    """S(U) = S_g[U_NN[U]]: lie_force (one backward pass) against central differences along a random direction
    and of single links."""
    lat = Lattice4D(SHAPE)
    net = networks(lat, 71)[kind]
    links = rough_links(lat, 72, 2)

    def action(u: torch.Tensor) -> torch.Tensor:
        return G.gauge_action(net(u), lat, 2.7)

    force = lie_force(action, links)
    assert force.shape == (2, 4, lat.volume, 3)
    p = direction(lat, 73, 2)
    fd = lie_fd(action, links, p, h=2e-5)
    assert torch.allclose((p * force).sum(dim=(1, 2, 3)), fd, rtol=1e-7, atol=0)
    for b, mu, n, a in [(0, 0, 0, 0), (1, 3, 33, 1), (0, 2, 50, 2)]:
        q = torch.zeros_like(p)
        q[b, mu, n, a] = 1.0
        single = lie_fd(action, links, q, h=2e-5)[b]
        assert abs(single - force[b, mu, n, a]) <= 1e-7 * abs(float(single)) + 1e-9


def test_lie_force_of_the_wilson_action_is_the_gauge_force() -> None:
    lat = Lattice4D((2, 2, 2, 2))
    links = rough_links(lat, 81, 2)
    force = lie_force(lambda u: G.gauge_action(u, lat, 2.7), links)
    assert torch.allclose(force, G.gauge_force(links, lat, 2.7), rtol=0, atol=1e-12)


def test_parameter_gradients_at_the_start() -> None:
    """Training starts at zero: the loss reaches every rho there (finite, and nonzero for the stout rhos)."""
    lat = Lattice4D((2, 2, 2, 2))
    links = rough_links(lat, 91, 2)
    for net in (StoutNetwork(lat, ALL, 2), CaskNetwork(lat, ("plaquette", "rectangle"), 1, max_s=2)):
        G.gauge_action(net(links), lat, 2.7).sum().backward()
        grads = [p.grad for p in net.parameters()]
        assert all(gr is not None and torch.isfinite(gr).all() for gr in grads)
        assert grads[0].abs().min() > 0


def test_batch_independence() -> None:
    """Every output for a batch of chains equals, bit for bit, the output for each chain alone."""
    lat = Lattice4D(SHAPE)
    links = rough_links(lat, 101, 3)
    nets = networks(lat, 102)
    layer = randomise(CaskLayer(lat, ("plaquette",), max_s=3), 103)
    single = randomise(StoutLayer(lat, ALL), 104)

    def outputs(u: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            out = [net(u) for net in nets.values()] + [layer.attention(u), single(u)]
            out += [LP.loop_features(u, lat, EVERY), LP.loop_sum_derivatives(u, lat, EVERY)]
            out += [LP.rectangle_staple(u, lat, 2, lower=True)]
        out += [lie_force(lambda v, n=net: G.gauge_action(n(v), lat, 2.7), u) for net in nets.values()]
        return out

    together = outputs(links)
    for b in range(3):
        for whole, alone in zip(together, outputs(links[b : b + 1]), strict=True):
            assert torch.equal(whole[b : b + 1], alone)
