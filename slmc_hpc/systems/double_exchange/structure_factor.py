"""The spin structure factor S(q) as analysis and plots present it: momenta in units of π, Néel peak at (π, π).

The framework averages a field observable over measurements per chain (`analysis.field_chain_means`);
this view centres the Brillouin zone, finds the peak, writes `structure_factor.csv` and draws
`structure_factor.png`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np


def centred_momenta(n: int) -> np.ndarray:
    """FFT indices k reordered so that q = 2πk/n runs over (-π, π], ascending (q = π included for even n)."""
    return (np.arange(n) - (n - 1) // 2) % n


def q_over_pi(n: int) -> np.ndarray:
    """q/π of the centred momenta of `centred_momenta(n)`: (-1, 1]."""
    return 2.0 * (np.arange(n) - (n - 1) // 2) / n


def centred(chain_means: np.ndarray) -> dict[str, np.ndarray]:
    """<S(q)> [ly, lx] on the centred grid with its error (scatter of the chain means; None with one chain)."""
    ly, lx = chain_means.shape[1:]
    chain_means = chain_means[:, centred_momenta(ly)][:, :, centred_momenta(lx)]
    n_chains = chain_means.shape[0]
    error = chain_means.std(axis=0, ddof=1) / math.sqrt(n_chains) if n_chains > 1 else None
    return {"mean": chain_means.mean(axis=0), "error": error, "qx": q_over_pi(lx), "qy": q_over_pi(ly)}


def peak(sq: dict[str, np.ndarray]) -> dict:
    """The largest <S(q)>: its momentum q/π, value and error."""
    iy, ix = np.unravel_index(np.argmax(sq["mean"]), sq["mean"].shape)
    error = None if sq["error"] is None else float(sq["error"][iy, ix])
    return {
        "qx_over_pi": float(sq["qx"][ix]),
        "qy_over_pi": float(sq["qy"][iy]),
        "mean": float(sq["mean"][iy, ix]),
        "error": error,
    }


def _cell(value) -> str:
    return "" if value is None else repr(float(value))


class StructureFactorView:
    """How `slmc-hpc analyze` and `plot` present `/samples/sq`."""

    csv_name = "structure_factor.csv"
    png_name = "structure_factor.png"

    def lines(self, chain_means: np.ndarray, format_value) -> list[str]:
        top = peak(centred(chain_means))
        return [
            f"S(q) peak       {format_value(top['mean'], top['error']):>22}   at q/π = "
            f"({top['qx_over_pi']:g}, {top['qy_over_pi']:g})"
        ]

    def write_csv(self, chain_means: np.ndarray, path: Path) -> Path:
        """<S(q)> per lattice momentum: qx/π, qy/π, mean, error (scatter of the chain means; empty with one chain)."""
        sq = centred(chain_means)
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["qx_over_pi", "qy_over_pi", "sq_mean", "sq_error"])
            for iy, qy in enumerate(sq["qy"]):
                for ix, qx in enumerate(sq["qx"]):
                    error = None if sq["error"] is None else sq["error"][iy, ix]
                    writer.writerow([repr(float(qx)), repr(float(qy)), repr(float(sq["mean"][iy, ix])), _cell(error)])
        return path

    def plot(self, chain_means: np.ndarray, title: str, path: Path, linear: bool = False) -> Path:
        """<S(q)> on the Brillouin zone, momenta in (-π, π] in units of π: Néel order peaks at (π, π) = (1, 1).

        Log colour scale by default: an ordered state's Bragg peak grows like N while the diffuse background
        stays O(1), so on a linear scale everything but the peak is one colour. `linear` for peak heights.
        """
        import matplotlib
        import matplotlib.pyplot as plt

        sq = centred(chain_means)
        mean = sq["mean"]
        ly, lx = mean.shape
        extent = (sq["qx"][0] - 1 / lx, sq["qx"][-1] + 1 / lx, sq["qy"][0] - 1 / ly, sq["qy"][-1] + 1 / ly)
        fig, ax = plt.subplots(figsize=(5.6, 5.0))
        norm = None
        log = not linear
        if log:
            positive = mean[mean > 0]
            floor = max(float(positive.min()), float(mean.max()) * 1e-6) if positive.size else 1e-12
            norm = matplotlib.colors.LogNorm(vmin=floor, vmax=max(float(mean.max()), floor * 10))
            mean = np.maximum(mean, floor)
        image = ax.imshow(mean, origin="lower", extent=extent, cmap="viridis", aspect="equal", norm=norm)
        label = r"$\langle S(q)\rangle$" + (" (log scale)" if log else "")
        colorbar = fig.colorbar(image, ax=ax, label=label, shrink=0.85)
        if log:  # labelled ticks across the range (LogNorm labels only powers of ten, often none or one)
            values = np.geomspace(norm.vmin, norm.vmax, 6)
            colorbar.set_ticks(values, labels=[f"{v:.3g}" for v in values])
            colorbar.minorticks_off()
        for axis, (low, high) in ((ax.xaxis, extent[:2]), (ax.yaxis, extent[2:])):
            axis.set_ticks([t for t in (-1, -0.5, 0, 0.5, 1) if low <= t <= high])
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set(xlabel=r"$q_x/\pi$", ylabel=r"$q_y/\pi$")
        ax.set_title(f"spin structure factor\n{title}", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path
