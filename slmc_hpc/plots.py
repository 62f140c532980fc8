"""Diagnostic plots of a run (PNG, matplotlib Agg): time series, autocorrelations, S(q), training, T scans.

Like analysis.py, this only reads run.h5 (and results.json), so it works on a run that is still going.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from slmc_hpc.analysis import analyze_run, gamma_analysis, read_samples, run_file  # noqa: E402

#: How many individual chains the time-series plot draws next to the mean over chains.
CHAINS_SHOWN = 3
LABELS = {
    "omega": r"$\Omega/N$",
    "m": r"$m$",
    "ms": r"$m_s$",
    "nn": r"$\langle S_i\cdot S_{i+\delta}\rangle$",
    "density": r"$n$",
    "electron_energy": r"$E_{el}/N$",
    "acceptance": "acceptance",
    "binder_ms": r"$\langle m_s^4\rangle/\langle m_s^2\rangle^2$",
    "chi_ms": r"$\chi_s$",
    "chi_m": r"$\chi$",
}


def _grid(n_panels: int, width: float = 11.0, row_height: float = 2.4, sharex: bool = True):
    cols = 2 if n_panels > 1 else 1
    rows = (n_panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(width, row_height * rows + 0.8), squeeze=False, sharex=sharex)
    for ax in axes.flat[n_panels:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:n_panels])


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _measure_unit(config: dict) -> str:
    sampler = config.get("sampler", {})
    step = "outer steps" if sampler.get("kind", "slmc") == "slmc" else "sweeps"
    return f"measurement (every {sampler.get('measure_every', 1)} {step})"


def plot_time_series(samples: dict[str, np.ndarray], info: dict, path: Path) -> Path:
    """Mean over chains and a few single chains per observable; production starts at measurement 0."""
    fig, axes = _grid(len(samples))
    for ax, (name, chains) in zip(axes, samples.items(), strict=False):
        steps = np.arange(chains.shape[1])
        for c in range(min(CHAINS_SHOWN, chains.shape[0])):
            ax.plot(steps, chains[c], lw=0.5, alpha=0.5, label=f"chain {c}")
        ax.plot(steps, chains.mean(axis=0), color="k", lw=1.0, label=f"mean of {chains.shape[0]} chains")
        ax.axvline(0, color="tab:red", ls="--", lw=1.0)
        ax.set_ylabel(LABELS.get(name, name))
    axes[0].legend(fontsize=7, loc="best")
    for ax in axes[-2:]:  # the bottom panel of each column (shared x axes hide the others' labels)
        ax.set_xlabel(_measure_unit(info["config"]))
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(
        f"time series ({info['status']}, {info['n_measurements']} measurements); thermalisation not stored:\n"
        "dashed line = measurement 0 = start of production"
    )
    return _save(fig, path)


def autocorrelation(chains: np.ndarray, max_lag: int) -> np.ndarray:
    """Normalised autocorrelation function ρ(t), t = 0..max_lag, averaged over chains (FFT, mean over all chains)."""
    deviations = chains - chains.mean()
    n = chains.shape[1]
    spectrum = np.fft.rfft(deviations, n=2 * n, axis=1)
    gamma = np.fft.irfft(spectrum * spectrum.conj(), axis=1)[:, : max_lag + 1].sum(axis=0)
    gamma /= chains.shape[0] * (n - np.arange(max_lag + 1))
    return gamma / gamma[0] if gamma[0] > 0 else np.zeros_like(gamma)


def plot_autocorrelation(samples: dict[str, np.ndarray], path: Path) -> Path:
    """ρ(t) per observable with the Γ-method's τ_int (e^{-t/τ_int} drawn for comparison)."""
    names = [n for n, c in samples.items() if np.ptp(c) > 0]
    fig, axes = _grid(max(1, len(names)), sharex=False)
    for ax, name in zip(axes, names, strict=False):
        chains = samples[name]
        stats = gamma_analysis(chains, name)
        max_lag = int(min(chains.shape[1] - 1, max(10, 8 * stats["tau_int"])))
        lags = np.arange(max_lag + 1)
        ax.plot(lags, autocorrelation(chains, max_lag), ".-", ms=3, lw=0.8, label=r"$\rho(t)$")
        ax.plot(lags, np.exp(-lags / max(stats["tau_int"], 1e-9)), "--", lw=0.8, label=r"$e^{-t/\tau_{int}}$")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_title(f"{name}: " + r"$\tau_{int}$" + f" = {stats['tau_int']:.2f} ± {stats['tau_int_error']:.2f}")
        ax.set_ylabel(r"$\rho(t)$")
        ax.set_xlabel("lag t (measurements)")
    axes[0].legend(fontsize=7)
    fig.suptitle("autocorrelation functions (all chains)")
    return _save(fig, path)


def plot_training(training: dict[str, np.ndarray], path: Path, steps_per_round: int | None = None) -> Path:
    """Training loss per optimizer step (dotted lines: round boundaries) and the SLMC acceptance per round."""
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 3.6))
    loss = training.get("loss", np.array([]))
    if loss.size:
        loss_ax.semilogy(np.arange(1, loss.size + 1), loss, lw=0.8)
        if steps_per_round:
            for boundary in range(steps_per_round, loss.size, steps_per_round):
                loss_ax.axvline(boundary + 0.5, color="grey", ls=":", lw=0.8)
    loss_ax.set(xlabel="optimizer step", ylabel=r"loss  MSE of $(\Omega - H_{eff})/N$", title="training loss")
    acceptance = training.get("round_acceptance", np.array([]))
    if acceptance.size:
        rounds = np.arange(1, acceptance.size + 1)
        acc_ax.plot(rounds, acceptance, "o-")
        acc_ax.set_xticks(rounds)
    acc_ax.set(xlabel="round", ylabel="SLMC acceptance", title="acceptance per round", ylim=(0, 1.05))
    return _save(fig, path)


def mean_structure_factor(path: Path, block: int = 256) -> np.ndarray | None:
    """S(q) averaged over chains and complete measurements, [ly, lx], read in blocks (the file can be large)."""
    with h5py.File(path, "r", locking=False) as f:
        if "samples/sq" not in f:
            return None
        data, n = f["samples/sq"], int(f["samples"].attrs.get("n_measurements", 0))
        if n == 0:
            return None
        total = sum(np.asarray(data[:, k : min(k + block, n)]).sum(axis=(0, 1)) for k in range(0, n, block))
        return total / (data.shape[0] * n)


def plot_structure_factor(sq: np.ndarray, path: Path) -> Path:
    """<S(q)> on the Brillouin zone, q = 0 in the middle; (pi, pi) (Neel order) shows at (-pi, -pi)."""
    ly, lx = sq.shape
    shifted = np.fft.fftshift(sq)
    qx = 2 * np.pi * (np.arange(lx) - lx // 2) / lx
    qy = 2 * np.pi * (np.arange(ly) - ly // 2) / ly
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    step_x, step_y = 2 * np.pi / lx, 2 * np.pi / ly
    extent = (qx[0] - step_x / 2, qx[-1] + step_x / 2, qy[0] - step_y / 2, qy[-1] + step_y / 2)
    image = ax.imshow(shifted, origin="lower", extent=extent, cmap="viridis", aspect="equal")
    fig.colorbar(image, ax=ax, label=r"$\langle S(q)\rangle$")
    ax.set(xlabel=r"$q_x$", ylabel=r"$q_y$", title=r"spin structure factor $\langle S(q)\rangle$")
    return _save(fig, path)


def read_training(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r", locking=False) as f:
        if "training" not in f:
            return {}
        arrays = {name: np.asarray(data) for name, data in f["training"].items() if data.ndim == 1}
    return {name: data for name, data in arrays.items() if data.size}


def plot_run(run_dir: Path) -> list[Path]:
    """All diagnostic plots of run_dir/run.h5 into run_dir/plots/; returns the PNG paths."""
    run_dir = Path(run_dir)
    path = run_file(run_dir)
    samples, info = read_samples(path)
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = []
    if info["n_measurements"] >= 1:
        written.append(plot_time_series(samples, info, out / "time_series.png"))
    if info["n_measurements"] >= 4:
        written.append(plot_autocorrelation(samples, out / "autocorrelation.png"))
    sq = mean_structure_factor(path)
    if sq is not None:
        written.append(plot_structure_factor(sq, out / "structure_factor.png"))
    training = read_training(path)
    if training:
        steps = info["config"].get("training", {}).get("steps_per_round")
        written.append(plot_training(training, out / "training.png", steps))
    for png in written:
        print(f"wrote {png}")
    return written


def scan_results(run_dir: Path) -> tuple[float, dict]:
    """(T, results) of one run of a scan; analyses the run first if it has no results.json yet."""
    run_dir = Path(run_dir)
    _, info = read_samples(run_file(run_dir))
    temperature = float(info["config"].get("model", {}).get("T", np.nan))
    results_path = run_dir / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else analyze_run(run_dir)
    return temperature, results


def plot_scan(run_dirs: list[Path], output: Path | None = None) -> Path:
    """Observables vs temperature with error bars, one point per run (from each run's results.json)."""
    points = sorted(scan_results(d) for d in run_dirs)
    temperatures = np.array([t for t, _ in points])
    names = [n for n in ("ms", "m", "omega", "nn", "binder_ms", "chi_ms", "electron_energy", "acceptance")]
    names = [n for n in names if all(n in r for _, r in points)]
    fig, axes = _grid(len(names), row_height=2.6)
    for ax, name in zip(axes, names, strict=False):
        means = [r[name]["mean"] for _, r in points]
        errors = [r[name]["error"] for _, r in points]
        ax.errorbar(temperatures, means, yerr=errors, fmt="o-", ms=4, capsize=3)
        ax.set_ylabel(LABELS.get(name, name))
    for ax in axes[-2:]:
        ax.set_xlabel("T")
    fig.suptitle(f"temperature scan ({len(points)} runs)")
    output = Path(output) if output else Path(run_dirs[0]).parent / "scan.png"
    return _save(fig, output)
