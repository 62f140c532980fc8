"""Periodic square lattice: site indexing, neighbour shells D_n and neighbour tables (docs/design.md §1)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np


def shell_vectors(n_shells: int) -> list[list[tuple[int, int]]]:
    """The shells D_0..D_n_shells of integer vectors, grouped by squared length.

    Shell 0 is [(0, 0)]; shell n >= 1 holds every vector whose squared length is the n-th smallest
    positive value of dx^2 + dy^2. Vectors are enumerated on the infinite plane, so on a small
    lattice several vectors of a shell can alias to the same site (as Bloch's theorem demands).
    """
    radius = 1
    while True:
        by_length: dict[int, list[tuple[int, int]]] = {}
        for dx in range(-radius, radius + 1):
            for dy in range(-radius, radius + 1):
                by_length.setdefault(dx * dx + dy * dy, []).append((dx, dy))
        lengths = sorted(by_length)
        # A squared length r2 <= radius^2 is complete inside the box.
        if len(lengths) > n_shells and lengths[n_shells] <= radius * radius:
            return [sorted(by_length[r2]) for r2 in lengths[: n_shells + 1]]
        radius *= 2


@dataclass(frozen=True)
class Lattice:
    """An lx x ly periodic square lattice with site index i = x + lx*y."""

    lx: int
    ly: int
    _tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.lx < 1 or self.ly < 1:
            raise ValueError(f"lattice size must be positive, got {self.lx} x {self.ly}")

    @property
    def n_sites(self) -> int:
        return self.lx * self.ly

    @cached_property
    def coords(self) -> np.ndarray:
        """[N, 2] integer coordinates (x, y) of every site."""
        i = np.arange(self.n_sites)
        return np.stack([i % self.lx, i // self.lx], axis=1)

    @cached_property
    def staggered_sign(self) -> np.ndarray:
        """(-1)^(x+y) per site, float64 [N]."""
        return (-1.0) ** self.coords.sum(axis=1)

    def site(self, x: np.ndarray | int, y: np.ndarray | int) -> np.ndarray | int:
        return (np.asarray(x) % self.lx) + self.lx * (np.asarray(y) % self.ly)

    @cached_property
    def n_distance_shells(self) -> int:
        """Shells up to the largest minimal-image distance: every pair distance of the torus (and aliases).

        Shells are grouped by squared length (`shell_vectors`), so this counts the distinct positive
        values of dx² + dy² up to (lx//2)² + (ly//2)².
        """
        limit = (self.lx // 2) ** 2 + (self.ly // 2) ** 2
        reach = math.isqrt(limit)
        return len({dx * dx + dy * dy for dx in range(reach + 1) for dy in range(reach + 1)} & set(range(1, limit + 1)))

    def shell(self, n: int) -> list[tuple[int, int]]:
        """The vectors of shell D_n (n = 0 is the site itself)."""
        return shell_vectors(n)[n]

    def neighbors(self, n: int) -> np.ndarray:
        """[N, |D_n|] int: the site i + delta for every delta in D_n (periodic, aliases kept)."""
        if n not in self._tables:
            deltas = np.array(self.shell(n))
            x, y = self.coords[:, 0:1], self.coords[:, 1:2]
            self._tables[n] = np.asarray(self.site(x + deltas[:, 0], y + deltas[:, 1]), dtype=np.int64)
        return self._tables[n]

    def shell_adjacency(self, n: int) -> np.ndarray:
        """[N, N] float64 A_n with A_n[i, j] = number of delta in D_n with i + delta = j."""
        a = np.zeros((self.n_sites, self.n_sites))
        np.add.at(a, (np.repeat(np.arange(self.n_sites), len(self.shell(n))), self.neighbors(n).ravel()), 1.0)
        return a

    def translate(self, spins: np.ndarray, dx: int, dy: int) -> np.ndarray:
        """Spins [..., N, 3] moved by (dx, dy): new[i + (dx, dy)] = old[i]."""
        target = np.asarray(self.site(self.coords[:, 0] + dx, self.coords[:, 1] + dy))
        out = np.empty_like(spins)
        out[..., target, :] = spins
        return out
