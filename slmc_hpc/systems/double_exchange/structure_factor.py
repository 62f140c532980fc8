"""The spin structure factor S(q) as analysis and plots present it, and the real-space correlation it implies.

The framework averages a field observable over measurements per chain (`analysis.field_chain_means`);
this view centres the Brillouin zone (momenta in units of π: Néel order peaks at (π, π)), finds the peak,
and gives the real-space correlation C(r) = ⟨S_0·S_r⟩ = (1/N) Σ_q ⟨S(q)⟩ e^{iq·r} (the inverse FFT: no extra
measurement). It writes `structure_factor.csv` and `correlation.csv`, and draws `structure_factor.png`
(`structure_factor_linear.png` on a linear colour scale) and `correlation.png`.
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


def correlation(chain_means: np.ndarray) -> dict[str, np.ndarray]:
    """C(r) = ⟨S_0·S_r⟩ per displacement (rx, ry) with its error (scatter of the chains), and the minimal-image
    distance |r|: the inverse FFT of each chain's ⟨S(q)⟩ (C(0) = 1 for unit spins)."""
    per_chain = np.fft.ifft2(chain_means, axes=(-2, -1)).real  # [C, ly, lx]
    n_chains, ly, lx = per_chain.shape
    error = per_chain.std(axis=0, ddof=1) / math.sqrt(n_chains) if n_chains > 1 else None
    ry, rx = np.meshgrid(np.arange(ly), np.arange(lx), indexing="ij")
    dx, dy = np.minimum(rx, lx - rx), np.minimum(ry, ly - ry)
    return {"mean": per_chain.mean(axis=0), "error": error, "rx": rx, "ry": ry, "distance": np.hypot(dx, dy)}


class StructureFactorView:
    """How `slmc-hpc analyze` and `plot` present `/samples/sq`: S(q) on the Brillouin zone, and C(r)."""

    def lines(self, chain_means: np.ndarray, format_value) -> list[str]:
        top = peak(centred(chain_means))
        nearest = correlation(chain_means)
        at_one = nearest["distance"] == 1.0
        c1 = float(nearest["mean"][at_one].mean())
        e1 = None if nearest["error"] is None else float(nearest["error"][at_one].mean())
        return [
            f"S(q) peak       {format_value(top['mean'], top['error']):>22}   at q/π = "
            f"({top['qx_over_pi']:g}, {top['qy_over_pi']:g})",
            f"<S_0·S_r>, |r|=1 {format_value(c1, e1):>21}   (correlation.csv: every displacement r)",
        ]

    def write_csv(self, chain_means: np.ndarray, directory: Path) -> list[Path]:
        """structure_factor.csv (qx/π, qy/π, mean, error) and correlation.csv (rx, ry, |r|, C(r), error)."""
        sq = centred(chain_means)
        paths = [Path(directory) / "structure_factor.csv", Path(directory) / "correlation.csv"]
        with open(paths[0], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["qx_over_pi", "qy_over_pi", "sq_mean", "sq_error"])
            for iy, qy in enumerate(sq["qy"]):
                for ix, qx in enumerate(sq["qx"]):
                    error = None if sq["error"] is None else sq["error"][iy, ix]
                    writer.writerow([repr(float(qx)), repr(float(qy)), repr(float(sq["mean"][iy, ix])), _cell(error)])
        c = correlation(chain_means)
        with open(paths[1], "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rx", "ry", "distance", "correlation", "correlation_error"])
            for iy, ix in np.ndindex(c["mean"].shape):
                error = None if c["error"] is None else c["error"][iy, ix]
                writer.writerow(
                    [ix, iy, repr(float(c["distance"][iy, ix])), repr(float(c["mean"][iy, ix])), _cell(error)]
                )
        return paths

    def plot(self, chain_means: np.ndarray, title: str, directory: Path, linear: bool = False) -> list[Path]:
        """structure_factor.png (log colour scale; `linear`: structure_factor_linear.png) and correlation.png."""
        name = "structure_factor_linear.png" if linear else "structure_factor.png"
        return [
            self._plot_sq(chain_means, title, Path(directory) / name, linear),
            self._plot_correlation(chain_means, title, Path(directory) / "correlation.png"),
        ]

    def _plot_sq(self, chain_means: np.ndarray, title: str, path: Path, linear: bool) -> Path:
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
        if not linear:
            positive = mean[mean > 0]
            floor = max(float(positive.min()), float(mean.max()) * 1e-6) if positive.size else 1e-12
            norm = matplotlib.colors.LogNorm(vmin=floor, vmax=max(float(mean.max()), floor * 10))
            mean = np.maximum(mean, floor)
        image = ax.imshow(mean, origin="lower", extent=extent, cmap="viridis", aspect="equal", norm=norm)
        label = r"$\langle S(q)\rangle$" + ("" if linear else " (log scale)")
        colorbar = fig.colorbar(image, ax=ax, label=label, shrink=0.85)
        if not linear:  # a few round ticks across the range (LogNorm labels only powers of ten, often none or one)
            values = _round_ticks(norm.vmin, norm.vmax)
            colorbar.set_ticks(values, labels=[f"{v:g}" for v in values])
            colorbar.minorticks_off()
        for axis, (low, high) in ((ax.xaxis, extent[:2]), (ax.yaxis, extent[2:])):
            axis.set_ticks([t for t in (-1, -0.5, 0, 0.5, 1) if low <= t <= high])
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
        ax.set(xlabel=r"$q_x/\pi$", ylabel=r"$q_y/\pi$")
        ax.set_title(f"spin structure factor\n{title}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path

    def _plot_correlation(self, chain_means: np.ndarray, title: str, path: Path) -> Path:
        """C(r) against |r|, and the staggered (-1)^(rx+ry) C(r), whose plateau is the squared Néel order."""
        import matplotlib.pyplot as plt

        c = correlation(chain_means)
        order = np.argsort(c["distance"], axis=None)
        distance = c["distance"].ravel()[order]
        mean = c["mean"].ravel()[order]
        error = None if c["error"] is None else c["error"].ravel()[order]
        sign = ((-1.0) ** (c["rx"] + c["ry"])).ravel()[order]
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.0))
        for ax, values, label in (
            (axes[0], mean, r"$\langle S_0\cdot S_r\rangle$"),
            (axes[1], sign * mean, r"$(-1)^{r_x+r_y}\langle S_0\cdot S_r\rangle$"),
        ):
            ax.errorbar(distance, values, yerr=error, fmt="o", ms=3, capsize=2)
            ax.axhline(0.0, color="grey", lw=0.6)
            ax.set(xlabel=r"distance $|r|$ (lattice spacings, minimal image)", ylabel=label)
        axes[0].set_title("real-space spin correlation")
        axes[1].set_title("staggered: its plateau is $m_s^2$ of the Néel state")
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


def _round_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """About `count` ticks between low and high, geometrically spaced and rounded to two significant digits."""
    values = np.geomspace(low, high, count)
    rounded = sorted({float(f"{v:.2g}") for v in values})
    return [v for v in rounded if low <= v <= high] or [low, high]
