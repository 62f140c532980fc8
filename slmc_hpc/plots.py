"""Diagnostic plots of a run (PNG, matplotlib Agg): time series, autocorrelations, S(q), training, T scans.

Like analysis.py, this only reads run.h5 (and results.json), so it works on a run that is still going.
Every title names the run (its system's `describe`: lattice, couplings, sampler, effective model), so
figures of different runs cannot be confused; labels and units come from the system's observables.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from slmc_hpc.analysis import (  # noqa: E402
    analyze_run,
    field_chain_means,
    field_views,
    format_value,
    gamma_analysis,
    is_constant,
    read_samples,
    run_file,
)
from slmc_hpc.errors import InputError  # noqa: E402
from slmc_hpc.io.integrity import READ_ERRORS, damaged, read  # noqa: E402

#: How many individual chains the time-series plot draws next to the mean over chains.
CHAINS_SHOWN = 3


def labels(info: dict) -> dict[str, str]:
    """Axis labels of the run's observables and derived quantities, with their units ("Ω/N [t]")."""
    run_config = info.get("run_config")
    if run_config is None:
        return {}
    system = run_config.system
    declared = [*system.observables(run_config), *system.derived(run_config)]
    return {q.name: q.label + (f" [{q.unit}]" if q.unit else "") for q in declared}


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


def run_label(info: dict) -> str:
    """What tells one run's figures from another's: its system's one-line description of the run."""
    run_config = info.get("run_config")
    if run_config is None:
        return str(info.get("path", "run"))
    return run_config.system.describe(run_config)


#: Acceptance is 0 or 1 per outer step and chain: it is drawn as a running mean over this many windows.
ACCEPTANCE_WINDOWS = 50


def running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean over the last `window` values (fewer at the start), along the last axis."""
    totals = np.cumsum(values, axis=-1)
    lagged = np.zeros_like(totals)
    lagged[..., window:] = totals[..., :-window]
    return (totals - lagged) / np.minimum(np.arange(1, values.shape[-1] + 1), window)


def _measure_unit(info: dict) -> str:
    run_config = info.get("run_config")
    if run_config is None:
        return "measurement"
    step = run_config.system.step_name(run_config)
    return f"measurement (every {run_config.sampler.measure_every} {step})"


def plot_time_series(samples: dict[str, np.ndarray], info: dict, path: Path) -> Path:
    """Mean over chains and a few single chains per observable; production starts at measurement 0.

    Acceptance is drawn as a running mean (a 0/1 series per chain is a solid block otherwise).
    """
    fig, axes = _grid(len(samples))
    for ax, (name, chains) in zip(axes, samples.items(), strict=False):
        steps = np.arange(chains.shape[1])
        label = labels(info).get(name, name)
        if name == "acceptance":
            window = max(1, chains.shape[1] // ACCEPTANCE_WINDOWS)
            chains = running_mean(chains, window)
            label = f"acceptance\n(running mean of {window})"
        for c in range(min(CHAINS_SHOWN, chains.shape[0])):
            ax.plot(steps, chains[c], lw=0.5, alpha=0.5, label=f"chain {c}")
        ax.plot(steps, chains.mean(axis=0), color="k", lw=1.0, label=f"mean of {chains.shape[0]} chains")
        ax.axvline(0, color="tab:red", ls="--", lw=1.0)
        ax.ticklabel_format(axis="y", useOffset=False)  # a density of 1 ± 1e-12 reads as 1, not as 1e-12 + 1
        ax.set_ylabel(label)
    axes[0].legend(fontsize=7, loc="best")
    for ax in axes[-2:]:  # the bottom panel of each column (shared x axes hide the others' labels)
        ax.set_xlabel(_measure_unit(info))
        ax.xaxis.set_tick_params(labelbottom=True)
    fig.suptitle(
        f"time series: {run_label(info)}\n({info['status']}, {info['n_measurements']} measurements; "
        "thermalisation not stored: dashed line = measurement 0 = start of production)"
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


def plot_autocorrelation(samples: dict[str, np.ndarray], info: dict, path: Path) -> Path:
    """ρ(t) per observable with the Γ-method's τ_int (e^{-t/τ_int} drawn for comparison); constants left out."""
    names = [n for n, c in samples.items() if not is_constant(c) and np.isfinite(c).all()]
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
    constants = [n for n in samples if n not in names]
    fig.suptitle(
        f"autocorrelation functions (all chains): {run_label(info)}"
        + (f"\nnot shown (constant or not finite): {', '.join(constants)}" if constants else "")
    )
    return _save(fig, path)


def plot_energy_violation(samples: dict[str, np.ndarray], info: dict, path: Path) -> Path:
    """Histogram of the trajectories' dH with <exp(-dH)> (1 for a correct MD), <dH> and the acceptance."""
    dh = samples["dH"].ravel()
    check = gamma_analysis(np.exp(-samples["dH"]), "exp_minus_dH")
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    ax.hist(dh, bins=min(80, max(10, dh.size // 40)), color="tab:blue", alpha=0.8)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set(xlabel=r"$\Delta H$ of a trajectory", ylabel="trajectories")
    accepted = f", acceptance {samples['acceptance'].mean():.3f}" if "acceptance" in samples else ""
    text = (
        rf"$\langle e^{{-\Delta H}}\rangle$ = {format_value(check['mean'], check['error'])}"
        + "\n"
        + rf"$\langle \Delta H\rangle$ = {dh.mean():.3g}{accepted}"
    )
    ax.text(
        0.98,
        0.95,
        text,
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=10,
        bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "grey"},
    )
    ax.set_title(f"energy violation of the trajectories ({dh.size} in all)\n{run_label(info)}", fontsize=10)
    return _save(fig, path)


def plot_training(training: dict[str, np.ndarray], info: dict, path: Path) -> Path:
    """Minibatch loss per optimizer step (dotted lines: round ends), the training and held-out validation
    loss after each round's fit, and the SLMC acceptance per round."""
    fig, (loss_ax, round_ax, acc_ax) = plt.subplots(1, 3, figsize=(14, 3.9))
    loss = training.get("loss", np.array([]))
    if loss.size:
        loss_ax.semilogy(np.arange(1, loss.size + 1), loss, lw=0.8)
        # Rounds stop early on the validation loss, so their lengths come from round_steps.
        for boundary in np.cumsum(training.get("round_steps", np.array([])))[:-1]:
            if 0 < boundary < loss.size:
                loss_ax.axvline(boundary + 0.5, color="grey", ls=":", lw=0.8)
    loss_ax.set(xlabel="optimizer step", ylabel=r"loss  MSE of (target $- H_{eff}$)/scale", title="training loss")
    for name, label, marker in (("round_loss", "training data", "o-"), ("round_validation_loss", "validation", "s--")):
        values = training.get(name, np.array([]))
        if values.size and np.any(np.isfinite(values) & (values > 0)):
            round_ax.semilogy(np.arange(1, values.size + 1), values, marker, label=label)
    if round_ax.lines:
        round_ax.legend()
        round_ax.set_xticks(np.arange(1, len(round_ax.lines[0].get_xdata()) + 1))
    round_ax.set(xlabel="round", ylabel="MSE after the round's fit", title="training vs held-out loss")
    acceptance = training.get("round_acceptance", np.array([]))
    if acceptance.size:
        rounds = np.arange(1, acceptance.size + 1)
        acc_ax.plot(rounds, acceptance, "o-")
        acc_ax.set_xticks(rounds)
    acc_ax.set(xlabel="round", ylabel="outer acceptance", title="acceptance per round", ylim=(0, 1.05))
    fig.suptitle(f"training: {run_label(info)}")
    return _save(fig, path)


def read_training(path: Path) -> dict[str, np.ndarray]:
    """The non-empty 1-D training histories in /training, read through their checksums."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            if "training" not in f:
                return {}
            arrays = {name: np.asarray(read(data)) for name, data in f["training"].items() if data.ndim == 1}
    except READ_ERRORS as exc:
        raise damaged(path, "/training", exc) from None
    return {name: data for name, data in arrays.items() if data.size}


def plot_run(run: Path, linear: bool = False) -> list[Path]:
    """All diagnostic plots of a run (its directory or run.h5) into plots/ next to run.h5; returns the PNG paths.

    Field observables (S(q)) are drawn by their system's view, on a log colour scale unless `linear`.
    A run with neither measurements nor training data is an InputError, and no plots/ folder is made.
    """
    path = run_file(run)
    samples, info = read_samples(path)
    n_meas = info["n_measurements"]
    views = field_views(info)
    fields = {name: field_chain_means(path, name) for name in views}
    training = read_training(path)
    if n_meas == 0 and not training:
        raise InputError(f"{path} ({info['status']}) holds no measurements and no training data yet: nothing to plot")
    out = path.parent / "plots"
    out.mkdir(exist_ok=True)
    written = []
    if n_meas >= 1:
        written.append(plot_time_series(samples, info, out / "time_series.png"))
    if n_meas >= 4:
        written.append(plot_autocorrelation(samples, info, out / "autocorrelation.png"))
    if n_meas >= 4 and "dH" in samples and np.isfinite(samples["dH"]).all():
        written.append(plot_energy_violation(samples, info, out / "energy_violation.png"))
    for name, means in fields.items():
        if means is not None:
            written.extend(views[name].plot(means, run_label(info), out, linear=linear))
    if training:
        written.append(plot_training(training, info, out / "training.png"))
    for png in written:
        print(f"wrote {png}")
    return written


def scan_results(run: Path) -> tuple[dict, dict, dict]:
    """(what the run is: `results.describe_run`, its results, its info) of one run of a scan; analyses it if needed."""
    from slmc_hpc.results import describe_run

    path = run_file(run)
    _, info = read_samples(path)
    results_path = path.parent / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else analyze_run(path)
    return describe_run(info), results, info


#: Columns of `describe_run` that are not parameters of the physics or the method.
_NOT_PARAMETERS = ("run",)


def scan_axes(rows: list[dict]) -> tuple[str, list[str]]:
    """(the scanned parameter: the numeric one with the most values; the others that vary, which group curves)."""
    keys = [k for k in rows[0] if k not in _NOT_PARAMETERS]
    varying = [k for k in keys if len({repr(row.get(k)) for row in rows}) > 1]
    numeric = [k for k in varying if all(isinstance(row.get(k), int | float) for row in rows)]
    if not numeric:
        raise InputError(
            "a scan plot needs runs that differ in a numeric parameter; these differ in: "
            + (", ".join(varying) or "nothing")
        )
    x = max(numeric, key=lambda k: len({row[k] for row in rows}))
    return x, [k for k in varying if k != x]


def _common(rows: list[dict], varying: list[str]) -> str:
    """What all runs of a scan share: 'L 4x4, J 2, mu 0, system double_exchange, sampler exact'."""
    shared = {k: v for k, v in rows[0].items() if k not in (*varying, *_NOT_PARAMETERS) and v != ""}
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in shared.items())


def plot_scan(run_dirs: list[Path], output: Path | None = None) -> Path:
    """Observables against the scanned parameter with error bars, one curve per group of the other parameters
    that vary (lattice size, model, sampler), with a legend; one point per run (from its results.json)."""
    points = [scan_results(d) for d in run_dirs]
    rows = [row for row, _, _ in points]
    x, grouping = scan_axes(rows)
    common = [name for name in points[0][1] if all(name in results for _, results, _ in points)]
    names = [n for n in common if n != "acceptance"] + (["acceptance"] if "acceptance" in common else [])
    axis_labels = labels(points[0][2])
    groups: dict[tuple, list] = {}
    for row, results, _ in points:
        groups.setdefault(tuple(row.get(k) for k in grouping), []).append((row[x], results))
    fig, axes = _grid(len(names), row_height=2.6)
    for ax, name in zip(axes, names, strict=False):
        for key, members in groups.items():
            members.sort(key=lambda member: member[0])
            xs = [member[0] for member in members]
            means = [member[1][name]["mean"] for member in members]
            errors = [member[1][name]["error"] for member in members]
            label = ", ".join(f"{k} {v}" for k, v in zip(grouping, key, strict=True)) or None
            ax.errorbar(xs, means, yerr=errors, fmt="o-", ms=4, capsize=3, label=label)
        ax.set_ylabel(axis_labels.get(name, name))
    if grouping:
        axes[0].legend(fontsize=7)
    for ax in axes[-2:]:
        ax.set_xlabel(x)
    values = [row[x] for row in rows]
    fig.suptitle(
        f"scan of {x} ({len(points)} runs, {x} = {min(values):g} ... {max(values):g}"
        + (f"; one curve per {', '.join(grouping)}" if grouping else "")
        + f")\n{_common(rows, [x, *grouping])}"
    )
    output = Path(output) if output else Path(run_dirs[0]).parent / "scan.png"
    return _save(fig, output)
