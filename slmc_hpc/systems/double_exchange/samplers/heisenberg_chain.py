"""Compiled single-site Metropolis chain under a Heisenberg energy (the linear model's inner chain).

The linear model's ΔH is local (a field from the shell neighbours), so a whole inner sweep is a few
hundred floating-point operations per move. In Python each move would cost ~20 µs of interpreter
overhead per batch; compiled with numba a move costs ~0.1 µs, so SLMC can afford many inner sweeps
per exact diagonalisation. Each chain runs on its own rows in a fixed order, so its result does not
depend on the other chains of the batch (chain histories stay independent of the number of ranks).

The arithmetic is that of `LinearModel.delta_energy`:
ΔH = -[(s' - s)·h_k + ½ c_k |s' - s|²] + Σ_{z: j != k} K_z [(s'·S_j)² - (s·S_j)²],  j = nbr[k, z],
with h_k = Σ_z w_z S_{nbr[k, z]} and c_k the self weight of k (the K_z sum only for the biquadratic
model); a move is accepted when u < exp(min(-ΔH/T, 0)), as in `samplers.chains.metropolis`.
"""

from __future__ import annotations

import math

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def _heisenberg_metropolis(
    spins, sites, dirs, uniforms, neighbors, weights, self_weights, quad_weights, has_quad, temperature, start, stop
):
    batch, n_columns = spins.shape[0], neighbors.shape[1]
    accepted = np.zeros(batch)
    delta = np.zeros(batch)
    for b in range(batch):
        total = 0.0
        count = 0.0
        for k in range(start, stop):
            i = sites[b, k]
            f0 = 0.0
            f1 = 0.0
            f2 = 0.0
            quad = 0.0
            for z in range(n_columns):
                j = neighbors[i, z]
                w = weights[z]
                f0 += w * spins[b, j, 0]
                f1 += w * spins[b, j, 1]
                f2 += w * spins[b, j, 2]
                if has_quad and j != i:
                    after = (
                        dirs[b, k, 0] * spins[b, j, 0] + dirs[b, k, 1] * spins[b, j, 1] + dirs[b, k, 2] * spins[b, j, 2]
                    )
                    before = (
                        spins[b, i, 0] * spins[b, j, 0]
                        + spins[b, i, 1] * spins[b, j, 1]
                        + spins[b, i, 2] * spins[b, j, 2]
                    )
                    quad += quad_weights[z] * (after * after - before * before)
            d0 = dirs[b, k, 0] - spins[b, i, 0]
            d1 = dirs[b, k, 1] - spins[b, i, 1]
            d2 = dirs[b, k, 2] - spins[b, i, 2]
            dh = -((d0 * f0 + d1 * f1 + d2 * f2) + 0.5 * self_weights[i] * (d0 * d0 + d1 * d1 + d2 * d2)) + quad
            log_ratio = min(-dh / temperature, 0.0)
            if uniforms[b, k] < math.exp(log_ratio):
                spins[b, i, 0] = dirs[b, k, 0]
                spins[b, i, 1] = dirs[b, k, 1]
                spins[b, i, 2] = dirs[b, k, 2]
                total += dh
                count += 1.0
        delta[b] = total
        accepted[b] = count
    return delta, accepted


def heisenberg_metropolis(
    spins: np.ndarray,
    sites: np.ndarray,
    dirs: np.ndarray,
    uniforms: np.ndarray,
    tables: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    temperature: float,
    start: int = 0,
    stop: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Moves `start:stop` of every chain, in place on `spins` [B, N, 3] (C-contiguous float64).

    `tables` = (neighbors [N, Z] int64, weights [Z], self_weights [N], biquadratic K per column [Z]) of
    `LinearModel.field_tables` (with all K zero, the plain Heisenberg chain).
    Returns (ΔH summed over the accepted moves [B], number of accepted moves [B]).
    """
    if not (spins.flags.c_contiguous and spins.dtype == np.float64):
        raise ValueError("spins must be a C-contiguous float64 array (updated in place)")
    stop = sites.shape[1] if stop is None else stop
    neighbors, weights, self_weights, quad_weights = tables
    has_quad = bool(np.any(quad_weights))
    return _heisenberg_metropolis(
        spins,
        sites,
        dirs,
        uniforms,
        neighbors,
        weights,
        self_weights,
        quad_weights,
        has_quad,
        float(temperature),
        int(start),
        int(stop),
    )
