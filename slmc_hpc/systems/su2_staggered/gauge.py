"""Wilson plaquette action, plaquette and Polyakov loop observables, staples and the gauge force (docs/design.md §9).

S_g = beta sum_n sum_{mu<nu} (1 - 1/2 Re tr U_munu(n)), U_munu(n) = U_mu(n) U_nu(n+mu) U_mu(n+nu)^dag U_nu(n)^dag.
Everything is differentiable torch code (the effective actions need autograd through smeared links).
"""

from __future__ import annotations

import torch

from .lattice import Lattice4D
from .links import dagger, mm, re_trace, trace_generators

#: The six planes mu < nu.
PLANES: tuple[tuple[int, int], ...] = tuple((mu, nu) for mu in range(4) for nu in range(mu + 1, 4))
_MU = torch.tensor([p[0] for p in PLANES])
_NU = torch.tensor([p[1] for p in PLANES])
#: For each mu, the three nu != mu.
_OTHERS = torch.tensor([[nu for nu in range(4) if nu != mu] for mu in range(4)])


def plaquettes(links: torch.Tensor, lattice: Lattice4D) -> torch.Tensor:
    """U_munu(n) for the six planes mu < nu (in the order of PLANES): [B, 6, V, 2, 2]."""
    mu, nu = _MU[:, None], _NU[:, None]
    u_mu = links[:, _MU]  # U_mu(n)
    u_nu_at_mu = links[:, nu, lattice.fwd[_MU]]  # U_nu(n + mu)
    u_mu_at_nu = links[:, mu, lattice.fwd[_NU]]  # U_mu(n + nu)
    u_nu = links[:, _NU]  # U_nu(n)
    return mm(mm(u_mu, u_nu_at_mu), dagger(mm(u_nu, u_mu_at_nu)))


def gauge_action(links: torch.Tensor, lattice: Lattice4D, beta: float) -> torch.Tensor:
    """Wilson action S_g per chain [B]."""
    plaq = re_trace(plaquettes(links, lattice))  # [B, 6, V]
    return beta * (6 * lattice.volume - 0.5 * plaq.sum(dim=(1, 2)))


def plaquette(links: torch.Tensor, lattice: Lattice4D) -> torch.Tensor:
    """Average plaquette sum_n sum_{mu<nu} 1/2 Re tr U_munu(n) / (6V) per chain [B] (1 for U = 1)."""
    plaq = re_trace(plaquettes(links, lattice))
    return 0.5 * plaq.sum(dim=(1, 2)) / (6 * lattice.volume)


def polyakov(links: torch.Tensor, lattice: Lattice4D) -> torch.Tensor:
    """Polyakov loop per chain [B]: mean over (x, y, z) of 1/2 Re tr prod_{t=0..Lt-1} U_4(x, y, z, t).

    Sites of one time slice are contiguous in the site index, so slice t is links[:, 3, t*Vs:(t+1)*Vs].
    """
    vs, lt = lattice.spatial_volume, lattice.shape[3]
    u_t = links[:, 3].reshape(links.shape[0], lt, vs, 2, 2)
    line = u_t[:, 0]
    for t in range(1, lt):
        line = mm(line, u_t[:, t])
    return 0.5 * re_trace(line).mean(dim=1)


def staples(links: torch.Tensor, lattice: Lattice4D) -> torch.Tensor:
    """Staple sum A_mu(n) [B, 4, V, 2, 2], so that the plaquettes holding U_mu(n) sum to Re tr(U_mu(n) A_mu(n)).

    A_mu(n) = sum_{nu != mu} [U_nu(n+mu) U_mu(n+nu)^dag U_nu(n)^dag + U_nu(n+mu-nu)^dag U_mu(n-nu)^dag U_nu(n-nu)].
    """
    mu = torch.arange(4)[:, None, None]  # [4, 1, 1]
    nu = _OTHERS[:, :, None]  # [4, 3, 1]
    fwd_mu = lattice.fwd[:, None, :]  # [4, 1, V]: n + mu
    fwd_nu = lattice.fwd[_OTHERS]  # [4, 3, V]: n + nu
    bwd_nu = lattice.bwd[_OTHERS]  # [4, 3, V]: n - nu
    fwd_mu_bwd_nu = lattice.bwd[nu, fwd_mu]  # [4, 3, V]: n + mu - nu
    upper = mm(links[:, nu, fwd_mu], dagger(mm(links[:, _OTHERS], links[:, mu, fwd_nu])))
    lower = mm(dagger(mm(links[:, mu, bwd_nu], links[:, nu, fwd_mu_bwd_nu])), links[:, nu, bwd_nu])
    return (upper + lower).sum(dim=2)


def gauge_force(links: torch.Tensor, lattice: Lattice4D, beta: float) -> torch.Tensor:
    """d_a S_g = d/ds S_g(exp(s T_a) U_mu(n)) at s = 0, [B, 4, V, 3].

    S_g depends on U_mu(n) through -beta/2 Re tr(U_mu(n) A_mu(n)), so d_a S_g = -beta/2 Re tr(T_a U_mu(n) A_mu(n)).
    """
    return -0.5 * beta * trace_generators(mm(links, staples(links, lattice)))
