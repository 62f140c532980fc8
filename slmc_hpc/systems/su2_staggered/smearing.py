"""Gauge-covariant networks on SU(2) links: trainable stout smearing and CASK, and the Lie force by autograd.

`StoutLayer` is the gauge-covariant neural network layer of Nagai & Tomiya (arXiv 2103.11965) as Gaugefields.jl
codes it (`src/smearing/stout_fast.jl`: `calc_C!`, `forward!`; staples from `src/smearing/stout_dataset.jl`):

    C_mu = sum_i rho_i C_i,mu,   Omega_mu = C_mu U_mu^dag,   Q_mu = TA(Omega_mu),   U'_mu = exp(Q_mu) U_mu,

with C_i,mu the public `make_Cmu` staples: the adjoints of the staples V_i,mu of loops.py (oriented like
`gauge.staples`, Re tr(U_mu V_mu) = the loops through U_mu). So Omega = (U_mu W_mu)^dag with W = sum_i rho_i V_i,
and for su(2) TA(Omega) = sum_a p_a T_a with p_a = 2 Re tr(T_a U_mu W_mu) = 2 `trace_generators(U W)`: rho > 0
moves U up the gradient of the loops (larger plaquettes). exp is the closed form `links.exp_algebra`, so every
layer's output is in SU(2) to rounding. The public layer has a two-input form, U' = exp(Q[U_beta]) U_alpha
(`forward!(s, Uout, rhos, Uin_alpha, Uin_beta)`), which CASK uses; `StoutLayer.step` is that form.
Staples and staple sums are computed as (alpha, beta) pairs of the real span of SU(2) (`loops.Pair`, from the links'
first rows: the links must be SU(2) to rounding), which is several times faster under autograd than 2x2 `mm`; the
last product exp(Q) U is the full `mm`, so zero rhos return the input links bit for bit.

`CaskLayer` is CASK (Nagai, Ohno & Tomiya, arXiv 2501.16955) as coded in Gaugefields.jl `src/smearing/CASK_smearing.jl`
(`forward!(cask::CASK_layer, ...)`), `src/smearing/CASK/attentionlayer.jl` (the attention weights) and
`src/smearing/CASK/stoutsmearing.jl` (the attention-weighted stout):

    U^Q = stout_Q(U), U^K = stout_K(U), U^V = stout_V(U)                 (three stouts, each its own rhos)
    a_{mu nu s}(n) = tan(pi / (4 (N_c + 0.01)) [Re tr(U^Q_mu V_{mu nu s}[U^K]) - Re tr(U_mu V_{mu nu s}[U])])
    U^A_mu = exp(TA(C^A_mu[U^V] U^V_mu^dag)) U_mu,  C^A_mu(n) = sum_{nu != mu, s} a_{mu nu s}(n) (up + down)^dag
    U'_mu  = exp(TA(C_mu[U^A] U^A_mu^dag)) U_mu                            (the plain stout, its own rhos)

for nu over the three directions != mu and s = 1..max_s; V_{mu nu s} is the upper staple of the 1 x s rectangle and
(up + down) its upper and lower staples (`loops.rectangle_staple`). Note that both stout steps multiply the
layer's input U (alpha = U_in in the public code), the attention step's output entering only through C[U^A].
With rho_Q = rho_K = 0, U^Q = U^K = U exactly, so a = tan(0) = 0, U^A = U and U' = exp(TA(C[U] U^dag)) U: the layer
is exactly `StoutLayer` with rho = its `stout.rho`, whatever rho_V is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .lattice import Lattice4D
from .links import RDTYPE, dagger, exp_algebra, mm, trace_generators
from .loops import (
    Pair,
    check_classes,
    first_rows,
    link_pair,
    pair_algebra_coordinates,
    pair_mul,
    pair_re_trace,
    rectangle_staple_pair,
    staple_pair,
)

#: N_c of SU(2), and the scale of CASK's attention argument (Gaugefields.jl: dNC = 0.01, tan(x pi / 4(NC + dNC))).
N_COLORS = 2
ATTENTION_SCALE = math.pi / (4 * (N_COLORS + 0.01))


def stout_step(alpha: torch.Tensor, beta: torch.Tensor, staple_sum: Pair) -> torch.Tensor:
    """exp(TA(C beta^dag)) alpha with C = W^dag, i.e. exp(sum_a p_a T_a) alpha with p_a = 2 Re tr(T_a beta W).

    staple_sum W is a staple sum built from beta's links, oriented like `gauge.staples`, as a (alpha, beta) pair of
    [B, 4, V] tensors (`loops.Pair`); alpha = beta is the ordinary stout step. The final product is the full 2x2
    `mm`, so a zero W returns alpha itself, bit for bit.
    """
    p = 2.0 * pair_algebra_coordinates(pair_mul(link_pair(beta), staple_sum))
    return mm(exp_algebra(p), alpha)


class StoutLayer(nn.Module):
    """One trainable stout step with one rho per loop class (start: 0, the identity map)."""

    def __init__(self, lattice: Lattice4D, classes: Sequence[str]):
        super().__init__()
        self.lattice = lattice
        self.classes = check_classes(classes)
        self.rho = nn.Parameter(torch.zeros(len(self.classes), dtype=RDTYPE))

    def staple_sum(self, links: torch.Tensor) -> Pair:
        """W_mu = sum_i rho_i V_i,mu as a pair of [B, 4, V] tensors (the public C_mu is W_mu^dag)."""
        rows = first_rows(links)
        alpha = beta = None
        for i, cls in enumerate(self.classes):
            a, b = staple_pair(rows, self.lattice, cls)
            a, b = self.rho[i] * a, self.rho[i] * b
            alpha, beta = (a, b) if alpha is None else (alpha + a, beta + b)
        return alpha, beta

    def step(self, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
        """The public two-input layer: exp(Q[beta]) alpha, Q from beta's staples and beta."""
        return stout_step(alpha, beta, self.staple_sum(beta))

    def forward(self, links: torch.Tensor) -> torch.Tensor:
        """U' = exp(Q[U]) U."""
        return self.step(links, links)


class StoutNetwork(nn.Module):
    """n_layers stout layers, each with its own rhos: U_NN[U]."""

    def __init__(self, lattice: Lattice4D, classes: Sequence[str], n_layers: int):
        super().__init__()
        self.lattice, self.classes = lattice, check_classes(classes)
        self.layers = nn.ModuleList(StoutLayer(lattice, self.classes) for _ in range(int(n_layers)))

    def forward(self, links: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            links = layer(links)
        return links


class CaskLayer(nn.Module):
    """One CASK layer: Q, K, V stouts, gauge-invariant attention weights, an attention-weighted stout, a stout.

    Parameters: `stout.rho` (the final plain stout, over `classes`) and `query.rho`, `key.rho`, `value.rho` (over
    `qkv_classes`, default `classes`: the public CASK_layer uses one loop list for all four unless given four).
    With query.rho = key.rho = 0 the layer equals StoutLayer(lattice, classes) with rho = stout.rho, exactly.
    """

    def __init__(
        self,
        lattice: Lattice4D,
        classes: Sequence[str],
        max_s: int = 3,
        qkv_classes: Sequence[str] | None = None,
    ):
        super().__init__()
        if max_s < 1:
            raise ValueError(f"max_s must be >= 1, got {max_s}")
        self.lattice, self.max_s = lattice, int(max_s)
        qkv = classes if qkv_classes is None else qkv_classes
        self.stout = StoutLayer(lattice, classes)
        self.query = StoutLayer(lattice, qkv)
        self.key = StoutLayer(lattice, qkv)
        self.value = StoutLayer(lattice, qkv)

    def attention(self, links: torch.Tensor) -> torch.Tensor:
        """a_{mu nu s}(n) [B, 4, 3, max_s, V] (nu over the three directions != mu in increasing order).

        Gauge invariant: both traces are closed 1 x s loops (the first with its mu link from U^Q, the rest from U^K).
        """
        uq, uk = self.query(links), self.key(links)
        rows_k, rows_u = first_rows(uk), first_rows(links)
        q = tuple(x[:, :, None] for x in link_pair(uq))
        u = tuple(x[:, :, None] for x in link_pair(links))
        weights = []
        for s in range(1, self.max_s + 1):
            corr = pair_re_trace(pair_mul(q, rectangle_staple_pair(rows_k, self.lattice, s))) - pair_re_trace(
                pair_mul(u, rectangle_staple_pair(rows_u, self.lattice, s))
            )
            weights.append(torch.tan(ATTENTION_SCALE * corr))
        return torch.stack(weights, dim=3)

    def attention_staples(self, values: torch.Tensor, weights: torch.Tensor) -> Pair:
        """sum_{nu, s} a_{mu nu s}(n) (upper + lower 1 x s staples of U^V)(n) as a pair of [B, 4, V] tensors
        (`calc_C!` with the weight matrix, before the adjoint)."""
        rows = first_rows(values)
        alpha = beta = None
        for s in range(1, self.max_s + 1):
            up = rectangle_staple_pair(rows, self.lattice, s)
            down = rectangle_staple_pair(rows, self.lattice, s, lower=True)
            w = weights[:, :, :, s - 1]
            a, b = (w * (up[0] + down[0])).sum(dim=2), (w * (up[1] + down[1])).sum(dim=2)
            alpha, beta = (a, b) if alpha is None else (alpha + a, beta + b)
        return alpha, beta

    def forward(self, links: torch.Tensor) -> torch.Tensor:
        weights = self.attention(links)
        values = self.value(links)
        attended = stout_step(links, values, self.attention_staples(values, weights))
        return self.stout.step(links, attended)


class CaskNetwork(nn.Module):
    """n_layers CASK layers: U_NN[U]."""

    def __init__(
        self,
        lattice: Lattice4D,
        classes: Sequence[str],
        n_layers: int,
        max_s: int = 3,
        qkv_classes: Sequence[str] | None = None,
    ):
        super().__init__()
        self.lattice, self.classes = lattice, check_classes(classes)
        self.layers = nn.ModuleList(CaskLayer(lattice, self.classes, max_s, qkv_classes) for _ in range(int(n_layers)))

    def forward(self, links: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            links = layer(links)
        return links


def lie_force(
    scalar_of_links: Callable[[torch.Tensor], torch.Tensor],
    links: torch.Tensor,
    create_graph: bool = False,
) -> torch.Tensor:
    """d_a S = d/ds S(exp(s T_a) U_mu(n)) at s = 0, [B, 4, V, 3], by one backward pass.

    scalar_of_links maps links [B, 4, V, 2, 2] to S per chain [B] (chains independent, so their sum is
    differentiated). torch's gradient of a real S in a complex U is G = dS/dRe U + i dS/dIm U, so
    dS = Re tr(G^dag dU); with dU = s T_a U that is d_a S = Re tr(T_a U G^dag) = trace_generators(U G^dag).
    create_graph keeps the graph (for a loss on the force); the HMC needs none.
    """
    with torch.enable_grad():
        u = links.detach().requires_grad_(True)
        action = scalar_of_links(u)
        (grad,) = torch.autograd.grad(action.sum(), u, create_graph=create_graph)
    return trace_generators(mm(u if create_graph else links, dagger(grad)))
