"""Four-dimensional periodic lattice: site index, neighbours, parity and staggered phases (docs/design.md §9).

Site index n = x + Lx*(y + Ly*(z + Lz*t)); directions mu = 0..3 are x, y, z, t (t last).
All tables are torch tensors so that gathers along them stay inside torch (and autograd).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

_N_DIM = 4


@dataclass(frozen=True)
class Lattice4D:
    """An Lx x Ly x Lz x Lt periodic lattice, every extent even (needed for the even/odd split).

    Attributes (all computed once):
      coords    [V, 4] int64   0-based (x, y, z, t) of every site
      fwd, bwd  [4, V] int64   index of n + mu and n - mu (periodic)
      parity    [V] int64      (x + y + z + t) % 2
      even, odd [V/2] int64    site indices of each parity, in increasing order
      half_index [V] int64     position of a site inside its own parity list
      eta       [4, V] float64 staggered phases eta_mu(n) (eta_1 = 1, eta_2 = (-1)^x, ...)
      bc_fwd    [4, V] float64 fermion boundary sign of the hop n -> n + mu (-1 across the t boundary)
      bc_bwd    [4, V] float64 fermion boundary sign of the hop n -> n - mu (-1 across the t boundary)
    """

    shape: tuple[int, int, int, int]
    coords: torch.Tensor = field(init=False, repr=False, compare=False)
    fwd: torch.Tensor = field(init=False, repr=False, compare=False)
    bwd: torch.Tensor = field(init=False, repr=False, compare=False)
    parity: torch.Tensor = field(init=False, repr=False, compare=False)
    even: torch.Tensor = field(init=False, repr=False, compare=False)
    odd: torch.Tensor = field(init=False, repr=False, compare=False)
    half_index: torch.Tensor = field(init=False, repr=False, compare=False)
    eta: torch.Tensor = field(init=False, repr=False, compare=False)
    bc_fwd: torch.Tensor = field(init=False, repr=False, compare=False)
    bc_bwd: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.shape)
        if len(shape) != _N_DIM or any(s != t for s, t in zip(shape, self.shape, strict=True)):
            raise ValueError(f"a 4D lattice needs 4 integer extents [Lx, Ly, Lz, Lt], got {list(self.shape)}")
        if any(s < 2 or s % 2 for s in shape):
            raise ValueError(f"every lattice extent must be even and >= 2, got {list(shape)}")
        object.__setattr__(self, "shape", shape)
        volume = shape[0] * shape[1] * shape[2] * shape[3]
        n = torch.arange(volume, dtype=torch.int64)
        coords = torch.empty(volume, _N_DIM, dtype=torch.int64)
        rest = n
        for mu, extent in enumerate(shape):
            coords[:, mu] = rest % extent
            rest = rest // extent
        strides = torch.tensor([1, shape[0], shape[0] * shape[1], shape[0] * shape[1] * shape[2]], dtype=torch.int64)
        extents = torch.tensor(shape, dtype=torch.int64)
        fwd = torch.empty(_N_DIM, volume, dtype=torch.int64)
        bwd = torch.empty(_N_DIM, volume, dtype=torch.int64)
        for mu in range(_N_DIM):
            x = coords[:, mu]
            fwd[mu] = n + ((x + 1) % extents[mu] - x) * strides[mu]
            bwd[mu] = n + ((x - 1) % extents[mu] - x) * strides[mu]
        parity = coords.sum(dim=1) % 2
        even = torch.nonzero(parity == 0).squeeze(1)
        odd = torch.nonzero(parity == 1).squeeze(1)
        half_index = torch.empty(volume, dtype=torch.int64)
        half_index[even] = torch.arange(even.numel())
        half_index[odd] = torch.arange(odd.numel())
        eta = torch.ones(_N_DIM, volume, dtype=torch.float64)
        for mu in range(1, _N_DIM):
            eta[mu] = 1.0 - 2.0 * (coords[:, :mu].sum(dim=1) % 2).to(torch.float64)
        t = coords[:, 3]
        bc_fwd = torch.ones(_N_DIM, volume, dtype=torch.float64)
        bc_bwd = torch.ones(_N_DIM, volume, dtype=torch.float64)
        bc_fwd[3, t == shape[3] - 1] = -1.0
        bc_bwd[3, t == 0] = -1.0
        for name, value in [
            ("coords", coords),
            ("fwd", fwd),
            ("bwd", bwd),
            ("parity", parity),
            ("even", even),
            ("odd", odd),
            ("half_index", half_index),
            ("eta", eta),
            ("bc_fwd", bc_fwd),
            ("bc_bwd", bc_bwd),
        ]:
            object.__setattr__(self, name, value)

    @property
    def volume(self) -> int:
        """Number of sites V."""
        return self.shape[0] * self.shape[1] * self.shape[2] * self.shape[3]

    @property
    def half_volume(self) -> int:
        """Number of sites of one parity, V/2."""
        return self.volume // 2

    @property
    def spatial_volume(self) -> int:
        """Lx * Ly * Lz, the number of Polyakov lines."""
        return self.shape[0] * self.shape[1] * self.shape[2]
