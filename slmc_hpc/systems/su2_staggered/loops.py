"""Loop classes of SU(2) gauge theory: loop sums, staples, and the 1 x s rectangle staples (docs/design.md §9).

The classes are those of the public Julia code (akio-tomiya/Wilsonloop.jl `src/Wilsonloop.jl`: `make_plaq`,
`make_rect`, `make_chair`, `make_polyakov`; the same shapes in Gaugefields.jl `src/autostaples/wilsonloops.jl`):

- ``plaquette``: [(mu,+1), (nu,+1), (mu,-1), (nu,-1)] for mu < nu, at every site (6 loops a site);
- ``rectangle``: [(mu,+1), (nu,+2), (mu,-1), (nu,-2)] and [(mu,+2), (nu,+1), (mu,-2), (nu,-1)] for mu < nu
  (12 loops a site: the 1x2 and the 2x1 loop of every plane);
- ``chair``: [(mu,+1), (nu,+1), (rho,+1), (mu,-1), (rho,-1), (nu,-1)] for the 24 ordered triples of distinct
  directions (`make_chair` walks the 4 triples {mu, nu, rho} in their 6 orders). Each is the bent 6-link loop of
  the (mu, nu) plaquette at n and the (mu, rho) plaquette at n + nu, which share the link U_mu(n + nu). This is
  the public definition, and it holds only half of the 48 bent loops a site: seen from the shared link, one
  plaquette lies on its -nu side and the other on its +rho side; the (+nu, +rho) and (-nu, -rho) chairs are absent;
- ``polyakov``: the Polyakov line in t, Re tr prod_t U_4(x, t), each line once (the sum over spatial sites).
  ``polyakov_x``, ``polyakov_y``, ``polyakov_z`` are the lines in x, y, z (summed over the sites with that
  coordinate 0). The public code has all four: Wilsonloop.jl `make_loops_fromname` ("polyakov_x" ... "polyakov_t"),
  LatticeQCD.jl `src/system/parameter_structs.jl` (`kindsof_loops`, the stout loops), and LatticeQCD.jl's
  self-learning training features (`Wilsonloops_actions` in `src/system/LTK_universe.jl` of its older commits) are
  ["plaq", "rect", "polyx", "polyy", "polyz", "polyt"], i.e. the spatial lines are used there too.

Staples follow Wilsonloop.jl `make_staple` / `make_Cmu` and Gaugefields.jl `src/smearing/stout_dataset.jl`: for
every occurrence of U_mu in every loop of the class (an occurrence as U_mu^dag is taken from the reversed loop),
the rest of the loop, read from n + mu back to n. Their sum V_mu(n) [B, 4, V, 2, 2] is oriented like
`gauge.staples` (for the plaquette class it *is* `gauge.staples`): a loop holding U_mu(n) once is Re tr(U_mu(n) S)
with S its staple, and for any class

    d/ds LoopSum(exp(s T_a) U_mu(n)) = Re tr(T_a U_mu(n) V_mu(n)) / multiplicity(class).

The multiplicity is 1 for plaquette, rectangle and chair. For a Polyakov class it is L_mu: the public code evaluates
the line from every site (so each line is counted L_mu times) and its C_mu holds L_mu identical staples; we keep
that staple (so a stout rho of the Polyakov class means what it means in the public code) while LoopSum counts each
line once. The public stout's C_mu is the adjoint of this V_mu (`make_Cmu` daggers the staples): see smearing.py.

Everything is differentiable torch code on links [B, 4, V, 2, 2] (the path products run on the links' first rows,
`Pair` below); the index tables are built once per lattice.
"""

from __future__ import annotations

import functools
import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import gauge
from .lattice import Lattice4D
from .links import mm, re_trace, trace_generators
from .schema import EXTRA_CLASSES, LOOP_CLASSES

_POLYAKOV_DIRECTION = {"polyakov_x": 0, "polyakov_y": 1, "polyakov_z": 2, "polyakov": 3}

#: A path is a sequence of unit steps (direction, +1 or -1); +1 multiplies U_mu(x), -1 multiplies U_mu(x - mu)^dag.
Path = tuple[tuple[int, int], ...]


def _steps(*segments: tuple[int, int]) -> Path:
    """[(mu, 2)] -> ((mu, 1), (mu, 1)): the public `make_links` expansion of segments into unit steps."""
    return tuple((d, 1 if n > 0 else -1) for d, n in segments for _ in range(abs(n)))


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The classes as a tuple, after checking every name (a typo must not silently drop a term)."""
    known = LOOP_CLASSES + EXTRA_CLASSES
    bad = [c for c in classes if c not in known]
    if bad or len(set(classes)) != len(classes):
        raise ValueError(f"loop classes must be distinct names out of {', '.join(known)}, got {list(classes)}")
    return tuple(classes)


def loop_shapes(cls: str, lattice: Lattice4D) -> list[Path]:
    """The loops of a class as paths from their origin, in the public code's order (see the module docstring)."""
    pairs = [(mu, nu) for mu in range(4) for nu in range(mu + 1, 4)]
    if cls == "plaquette":
        return [_steps((mu, 1), (nu, 1), (mu, -1), (nu, -1)) for mu, nu in pairs]
    if cls == "rectangle":
        shapes = []
        for mu, nu in pairs:
            shapes.append(_steps((mu, 1), (nu, 2), (mu, -1), (nu, -2)))
            shapes.append(_steps((mu, 2), (nu, 1), (mu, -2), (nu, -1)))
        return shapes
    if cls == "chair":
        return [
            _steps((mu, 1), (nu, 1), (rho, 1), (mu, -1), (rho, -1), (nu, -1))
            for mu, nu, rho in itertools.permutations(range(4), 3)
        ]
    if cls in _POLYAKOV_DIRECTION:
        mu = _POLYAKOV_DIRECTION[cls]
        return [_steps((mu, lattice.shape[mu]))]
    raise ValueError(f"unknown loop class {cls!r}; expected one of {', '.join(LOOP_CLASSES + EXTRA_CLASSES)}")


def multiplicity(cls: str, lattice: Lattice4D) -> int:
    """How often V_mu counts each loop: d/ds LoopSum(exp(s T_a) U) = Re tr(T_a U V) / multiplicity."""
    if cls in _POLYAKOV_DIRECTION:
        return lattice.shape[_POLYAKOV_DIRECTION[cls]]
    loop_shapes(cls, lattice)  # raises on an unknown class
    return 1


def staple_paths(shape: Path) -> list[tuple[int, Path]]:
    """(mu, path from n + mu back to n) for every occurrence of a link in a loop: Wilsonloop.jl `make_Cmu`.

    An occurrence as U_mu(x)^dag is read from the reversed loop (Re tr W = Re tr W^dag), where it is U_mu(x).
    """
    out = []
    length = len(shape)
    reverse = tuple((d, -s) for d, s in reversed(shape))
    for k, (d, s) in enumerate(shape):
        if s > 0:
            out.append((d, shape[k + 1 :] + shape[:k]))
        else:
            j = length - 1 - k
            out.append((d, reverse[j + 1 :] + reverse[:j]))
    return out


# ------------------------------------------------------------------------------ Cayley-Klein pairs (the real span)

#: An element of the real span of SU(2), a0 + i a.sigma = [[alpha, beta], [-conj(beta), conj(alpha)]], held as its
#: first row (alpha, beta) = (a0 + i a3, a2 + i a1): two complex tensors of one shape. Products, adjoints and real
#: linear combinations stay in the span, so every loop, staple and staple sum here is one; a product is four
#: complex multiplications of contiguous tensors, whose backward needs no reductions (the broadcasting 2x2 `mm`
#: spends most of a backward pass summing over its broadcast axes).
Pair = tuple[torch.Tensor, torch.Tensor]


def first_rows(links: torch.Tensor) -> torch.Tensor:
    """The first rows (alpha, beta) of links [B, 4, V, 2, 2] as one contiguous [B, 4V, 2] tensor.

    Links are SU(2) to rounding, so the first row is the whole matrix; the second row is not read.
    """
    return links[..., 0, :].reshape(links.shape[0], -1, 2)


def pair_mul(x: Pair, y: Pair) -> Pair:
    """The product of two elements of the span: (a1 a2 - b1 conj(b2), a1 b2 + b1 conj(a2))."""
    return x[0] * y[0] - x[1] * y[1].conj(), x[0] * y[1] + x[1] * y[0].conj()


def pair_dagger(x: Pair) -> Pair:
    """The adjoint: (conj(alpha), -beta)."""
    return x[0].conj(), -x[1]


def pair_re_trace(x: Pair) -> torch.Tensor:
    """Re tr = 2 Re alpha."""
    return 2.0 * x[0].real


def pair_algebra_coordinates(x: Pair) -> torch.Tensor:
    """Re tr(T_a X), a = 1, 2, 3 [..., 3] (= `links.trace_generators` of the matrix): -(Im beta, Re beta, Im alpha)."""
    return -torch.stack([x[1].imag, x[1].real, x[0].imag], dim=-1)


def pair_to_matrix(x: Pair) -> torch.Tensor:
    """[[alpha, beta], [-conj(beta), conj(alpha)]] [..., 2, 2]."""
    row0 = torch.stack([x[0], x[1]], dim=-1)
    row1 = torch.stack([-x[1].conj(), x[0].conj()], dim=-1)
    return torch.stack([row0, row1], dim=-2)


def link_pair(links: torch.Tensor) -> Pair:
    """(alpha, beta) of links [..., 2, 2] (their first row), each [...]."""
    return links[..., 0, 0], links[..., 0, 1]


# ------------------------------------------------------------------------------------------------ path products


@dataclass(frozen=True)
class _Family:
    """Paths with one sign pattern, evaluated together: products [B, P, S] (pairs) from S start sites each.

    index[k] holds the flat link index mu * V + site of step k of every (path, start); target and weight say, for
    staples, the direction each path is added to and how often (identical staples are evaluated once).
    """

    signs: tuple[int, ...]
    index: torch.Tensor  # [L, P * S] int64
    n_paths: int
    n_sites: int
    target: torch.Tensor | None = None  # [P] int64
    weight: torch.Tensor | None = None  # [P] float64, None when every weight is 1


def _compile(
    lattice: Lattice4D, signs: tuple[int, ...], dirs: list[tuple[int, ...]], starts: torch.Tensor
) -> torch.Tensor:
    """Flat link indices [L, P * S] of paths with directions dirs [P][L] and signs, from starts [P, S]."""
    d = torch.tensor(dirs, dtype=torch.int64).reshape(len(dirs), len(signs))
    pos = starts
    out = []
    for k, sign in enumerate(signs):
        dk = d[:, k : k + 1]
        if sign > 0:
            out.append(dk * lattice.volume + pos)
            pos = lattice.fwd[dk, pos]
        else:
            pos = lattice.bwd[dk, pos]
            out.append(dk * lattice.volume + pos)
    return torch.stack(out).reshape(len(signs), -1)


def _evaluate(rows: torch.Tensor, family: _Family) -> Pair:
    """The path products of one family from first rows [B, 4V, 2]: a pair of [B, P, S] tensors."""
    batch = rows.shape[0]
    index = family.index.to(rows.device)
    prod = None
    for k, sign in enumerate(family.signs):
        u = rows[:, index[k]].view(batch, family.n_paths, family.n_sites, 2)
        step = (u[..., 0], u[..., 1])
        if sign < 0:
            step = pair_dagger(step)
        prod = step if prod is None else pair_mul(prod, step)
    return prod


def _families(lattice: Lattice4D, entries: list[tuple[Path, torch.Tensor, int, int]]) -> tuple[_Family, ...]:
    """Group (path, starts [S], target, weight) entries by sign pattern into families."""
    groups: dict[tuple[int, ...], list[tuple[Path, torch.Tensor, int, int]]] = {}
    for entry in entries:
        groups.setdefault(tuple(s for _, s in entry[0]), []).append(entry)
    out = []
    for signs, group in groups.items():
        dirs = [tuple(d for d, _ in path) for path, _, _, _ in group]
        starts = torch.stack([start for _, start, _, _ in group])
        weights = [w for _, _, _, w in group]
        out.append(
            _Family(
                signs=signs,
                index=_compile(lattice, signs, dirs, starts),
                n_paths=len(group),
                n_sites=starts.shape[1],
                target=torch.tensor([t for _, _, t, _ in group], dtype=torch.int64),
                weight=None if all(w == 1 for w in weights) else torch.tensor(weights, dtype=torch.float64),
            )
        )
    return tuple(out)


@functools.lru_cache(maxsize=64)
def _loop_families(lattice: Lattice4D, cls: str) -> tuple[_Family, ...]:
    """Families of a class's loops from every site (a Polyakov line: from the sites with x_mu = 0 only)."""
    if cls in _POLYAKOV_DIRECTION:
        starts = torch.nonzero(lattice.coords[:, _POLYAKOV_DIRECTION[cls]] == 0).squeeze(1)
    else:
        starts = torch.arange(lattice.volume)
    return _families(lattice, [(shape, starts, 0, 1) for shape in loop_shapes(cls, lattice)])


@functools.lru_cache(maxsize=64)
def _staple_families(lattice: Lattice4D, cls: str) -> tuple[_Family, ...]:
    """Families of a class's staples, each path from n + mu, identical ones counted (the Polyakov line's L_mu)."""
    counts = Counter(p for shape in loop_shapes(cls, lattice) for p in staple_paths(shape))
    entries = [(path, lattice.fwd[mu], mu, w) for (mu, path), w in counts.items()]
    return _families(lattice, entries)


def staple_pair(rows: torch.Tensor, lattice: Lattice4D, cls: str) -> Pair:
    """V_mu(n) of a class as a pair of [B, 4, V] tensors, from first rows [B, 4V, 2] (see `class_staples`).

    Every class, the plaquette included, is built from its loop shapes here (the networks' path; the test suite
    checks the plaquette's against `gauge.staples`).
    """
    batch = rows.shape[0]
    alpha = torch.zeros(batch, 4, lattice.volume, dtype=rows.dtype, device=rows.device)
    beta = torch.zeros_like(alpha)
    for family in _staple_families(lattice, cls):
        a, b = _evaluate(rows, family)
        if family.weight is not None:
            w = family.weight.to(rows.device)[:, None]
            a, b = a * w, b * w
        target = family.target.to(rows.device)
        alpha, beta = alpha.index_add(1, target, a), beta.index_add(1, target, b)
    return alpha, beta


# ----------------------------------------------------------------------------------------------------- public API


def loop_sum(links: torch.Tensor, lattice: Lattice4D, cls: str) -> torch.Tensor:
    """Sum of Re tr over every loop of a class, each loop once, per configuration [B]."""
    if cls == "plaquette":
        return re_trace(gauge.plaquettes(links, lattice)).sum(dim=(1, 2))
    rows = first_rows(links)
    total = None
    for family in _loop_families(lattice, cls):
        part = pair_re_trace(_evaluate(rows, family)).sum(dim=(1, 2))
        total = part if total is None else total + part
    return total


def loop_features(links: torch.Tensor, lattice: Lattice4D, classes: Sequence[str]) -> torch.Tensor:
    """The loop sums of the classes [B, len(classes)]: the features of the linear `loops` effective action."""
    return torch.stack([loop_sum(links, lattice, cls) for cls in check_classes(classes)], dim=1)


def class_staples(links: torch.Tensor, lattice: Lattice4D, cls: str) -> torch.Tensor:
    """V_mu(n) [B, 4, V, 2, 2] of a class: d/ds LoopSum(exp(s T_a) U_mu(n)) = Re tr(T_a U_mu V_mu) / multiplicity.

    The plaquette class reuses `gauge.staples`; the others are built from the loop shapes as the public code does.
    """
    if cls == "plaquette":
        return gauge.staples(links, lattice)
    return pair_to_matrix(staple_pair(first_rows(links), lattice, cls))


def loop_sum_derivative(links: torch.Tensor, lattice: Lattice4D, cls: str) -> torch.Tensor:
    """d_a LoopSum = d/ds LoopSum(exp(s T_a) U_mu(n)) at s = 0, [B, 4, V, 3] (the `loops` action's force per class)."""
    return trace_generators(mm(links, class_staples(links, lattice, cls))) / multiplicity(cls, lattice)


def loop_sum_derivatives(links: torch.Tensor, lattice: Lattice4D, classes: Sequence[str]) -> torch.Tensor:
    """d_a LoopSum of every class [B, len(classes), 4, V, 3]: a linear S = sum_i c_i LoopSum_i has force c . this."""
    return torch.stack([loop_sum_derivative(links, lattice, cls) for cls in check_classes(classes)], dim=1)


def _others() -> list[tuple[int, int]]:
    """(mu, nu) for mu = 0..3 and the three nu != mu in increasing order (`gauge._OTHERS`'s order)."""
    return [(mu, nu) for mu in range(4) for nu in range(4) if nu != mu]


@functools.lru_cache(maxsize=64)
def _rectangle_family(lattice: Lattice4D, s: int, lower: bool) -> _Family:
    """The upper (or lower) 1 x s staples of the 12 pairs (mu, nu != mu), each path from n + mu."""
    pairs = _others()
    if lower:
        paths = [_steps((nu, -s), (mu, -1), (nu, s)) for mu, nu in pairs]
    else:
        paths = [_steps((nu, s), (mu, -1), (nu, -s)) for mu, nu in pairs]
    starts = torch.stack([lattice.fwd[mu] for mu, _ in pairs])
    signs = tuple(sign for _, sign in paths[0])
    dirs = [tuple(d for d, _ in path) for path in paths]
    return _Family(signs, _compile(lattice, signs, dirs, starts), len(pairs), lattice.volume)


def rectangle_staple_pair(rows: torch.Tensor, lattice: Lattice4D, s: int, lower: bool = False) -> Pair:
    """`rectangle_staple` as a pair of [B, 4, 3, V] tensors, from first rows [B, 4V, 2]."""
    if s < 1:
        raise ValueError(f"the rectangle extent s must be >= 1, got {s}")
    a, b = _evaluate(rows, _rectangle_family(lattice, int(s), bool(lower)))
    shape = (rows.shape[0], 4, 3, lattice.volume)
    return a.view(shape), b.view(shape)


def rectangle_staple(links: torch.Tensor, lattice: Lattice4D, s: int, lower: bool = False) -> torch.Tensor:
    """The staple of the 1 x s rectangles (extent 1 along mu, s along nu) per plane, [B, 4, 3, V, 2, 2] indexed by
    mu, the three nu != mu in increasing order, and n.

    upper (lower=False): U_nu(n+mu) ... U_nu(n+mu+(s-1)nu) U_mu(n+s nu)^dag U_nu(n+(s-1)nu)^dag ... U_nu(n)^dag, so
    Re tr(U_mu(n) upper) is the loop [(mu,+1), (nu,+s), (mu,-1), (nu,-s)] at n: CASK's V_{mu nu s}, Gaugefields.jl
    `src/smearing/CASK/attentionlayer.jl` (`make_staple(Wilsonline(loop), mu)[1]`).
    lower: U_nu(n+mu-nu)^dag ... U_nu(n+mu-s nu)^dag U_mu(n-s nu)^dag U_nu(n-s nu) ... U_nu(n-nu), the staple of the
    same loop at n - s nu, whose far side is U_mu(n); `make_Cmu` of that loop (`make_longstaple_pair` in
    `src/smearing/stout_fast.jl`) holds both. For s = 1, upper + lower summed over nu is `gauge.staples`.
    """
    return pair_to_matrix(rectangle_staple_pair(first_rows(links), lattice, s, lower))
