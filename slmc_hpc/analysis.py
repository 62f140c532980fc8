"""Error analysis of a run: reads run.h5 (also while the run is still writing it) and never touches the sampler.

Each chain is one replica of a single Monte Carlo ensemble. Primary observables get the Γ-method of
pyerrors (Wolff 2004, automatic windowing): mean, error, integrated autocorrelation time τ_int in units of
measurements (τ_int = 1/2 for uncorrelated data) and the effective sample size ESS = n_total / (2 τ_int).
Non-linear functions of means (Binder ratio, susceptibilities) get a blocked jackknife, with blocks
several τ_int long so that the blocks are nearly independent.
"""

from __future__ import annotations

import csv as csv_module
import json
import math
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pyerrors as pe
from ruamel.yaml import YAML

from slmc_hpc.errors import InputError
from slmc_hpc.io.runfile import plain_value

#: Scalar observables in /samples, one value per chain and measurement (CONTRIBUTING.md).
SCALAR_OBSERVABLES = ("omega", "m", "ms", "nn", "density", "electron_energy", "acceptance")
#: Jackknife blocks are this many (largest) τ_int long.
BLOCK_TAU = 4.0
#: A run.h5 modified this recently with status "running" is taken to have a live writer.
LIVE_WRITER_SECONDS = 120.0


def run_file(run_dir: Path) -> Path:
    """run_dir/run.h5, or InputError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError(f"run directory {run_dir} does not exist")
    path = run_dir / "run.h5"
    if not path.is_file():
        raise InputError(f"{path} does not exist (is {run_dir} the output.dir of a run?)")
    return path


def read_samples(path: Path, attempts: int = 3) -> tuple[dict[str, np.ndarray], dict]:
    """The complete measurements of every scalar observable ([n_chains, n_measurements] each) and run info.

    Only the first /samples.attrs["n_measurements"] columns are read: later ones may be half written.
    A read that collides with a flush of the running job is retried after a second.
    """
    for attempt in range(attempts):
        try:
            return _read_samples(path)
        except OSError as exc:
            if attempt == attempts - 1:
                raise InputError(f"cannot read {path}: {exc}") from exc
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _read_samples(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with h5py.File(path, "r", locking=False) as f:
        if "samples" not in f:
            raise InputError(f"{path} has no /samples group (the run has not started measuring)")
        group = f["samples"]
        n_meas = int(group.attrs.get("n_measurements", 0))
        names = [n for n in SCALAR_OBSERVABLES if n in group]
        names += sorted(n for n in group if n not in names and group[n].ndim == 2)
        samples = {name: np.asarray(group[name][:, :n_meas], dtype=np.float64) for name in names}
        config_yaml = str(plain_value(f.attrs.get("config_yaml", "")))
        info = {
            "status": str(plain_value(f.attrs.get("status", "unknown"))),
            "config_yaml": config_yaml,
            "config": YAML(typ="safe").load(config_yaml or "{}") or {},  # parsed once, for analysis and plots
            "n_measurements": n_meas,
            "sq_shape": group["sq"].shape[2:] if "sq" in group else None,
        }
    return samples, info


def model_constants(info: dict) -> tuple[int | None, float | None]:
    """(number of sites N, temperature T) from the run's resolved config; None where unknown."""
    n_sites = temperature = None
    model = info.get("config", {}).get("model", {})
    if "lx" in model and "ly" in model:
        n_sites = int(model["lx"]) * int(model["ly"])
    if model.get("T") is not None:
        temperature = float(model["T"])
    if n_sites is None and info.get("sq_shape"):
        n_sites = int(np.prod(info["sq_shape"]))
    return n_sites, temperature


# -- Γ-method for primary observables ---------------------------------------------------------------------


def gamma_analysis(chains: np.ndarray, name: str = "obs") -> dict:
    """Γ-method statistics of one observable, chains [n_chains, n_measurements] treated as replicas."""
    chains = np.atleast_2d(np.asarray(chains, dtype=np.float64))
    n_chains, n_meas = chains.shape
    n_total = n_chains * n_meas
    base = {"n_chains": n_chains, "n_measurements": n_meas, "mean": float(chains.mean())}
    if n_meas < 2 or np.ptp(chains) == 0.0:
        # Constant data (e.g. acceptance 1 throughout): no fluctuations, nothing to correlate.
        return {**base, "error": 0.0, "error_of_error": 0.0, "tau_int": 0.5, "tau_int_error": 0.0, "ess": n_total}
    obs = pe.Obs(list(chains), [f"run|r{c}" for c in range(n_chains)])
    obs.gamma_method()
    tau = float(obs.e_tauint["run"])
    return {
        **base,
        "mean": float(obs.value),
        "error": float(obs.dvalue),
        "error_of_error": float(obs.ddvalue),
        "tau_int": tau,
        "tau_int_error": float(obs.e_dtauint["run"]),
        "ess": float(n_total / (2.0 * tau)) if tau > 0 else float(n_total),
    }


# -- blocked jackknife for derived quantities -------------------------------------------------------------


def jackknife_blocks(n_chains: int, n_meas: int, tau_int: float) -> tuple[int, int]:
    """(bins per chain, bin length): bins BLOCK_TAU τ_int long; whole chains if they are shorter than that."""
    length = max(1, math.ceil(BLOCK_TAU * tau_int))
    bins = max(1, n_meas // length)
    if n_chains * bins < 2:  # a single short chain: fall back to two halves
        bins = 2
    return bins, n_meas // bins


def jackknife(function, arrays: list[np.ndarray], bins: int, length: int) -> tuple[float, float]:
    """f(<a>, <b>, ...) on all data and its delete-one-block jackknife error.

    arrays: [n_chains, n_measurements] each; the blocks are `bins` consecutive stretches of `length`
    measurements in every chain (a remainder at the end of a chain is left out of the blocks only).
    """
    value = float(function(*[a.mean() for a in arrays]))
    n_chains = arrays[0].shape[0]
    used = bins * length
    block_sums = np.stack([a[:, :used].reshape(n_chains * bins, length).sum(axis=1) for a in arrays])
    totals = block_sums.sum(axis=1, keepdims=True)
    n_blocks = block_sums.shape[1]
    leave_one_out = (totals - block_sums) / ((n_blocks - 1) * length)
    estimates = np.asarray(function(*leave_one_out), dtype=np.float64)
    error = math.sqrt((n_blocks - 1) / n_blocks * np.sum((estimates - estimates.mean()) ** 2))
    return value, error


def derived_quantities(samples: dict[str, np.ndarray], primary: dict, n_sites: int | None, temperature) -> dict:
    """Binder ratio <ms^4>/<ms^2>^2 and susceptibilities N(<x^2> - <x>^2)/T of ms and m, with jackknife errors."""
    out = {}
    for name in ("ms", "m"):
        if name not in samples or samples[name].shape[1] < 2:
            continue
        x = samples[name]
        bins, length = jackknife_blocks(*x.shape, primary[name]["tau_int"])
        x2, x4 = x**2, x**4
        info = {"n_chains": x.shape[0], "n_measurements": x.shape[1], "jackknife_blocks": x.shape[0] * bins}
        if name == "ms":
            mean, error = jackknife(lambda a2, a4: a4 / a2**2, [x2, x4], bins, length)
            out["binder_ms"] = {"mean": mean, "error": error, "tau_int": primary[name]["tau_int"], **info}
        if n_sites and temperature:
            mean, error = jackknife(lambda a, a2, s=n_sites / temperature: s * (a2 - a**2), [x, x2], bins, length)
            out[f"chi_{name}"] = {"mean": mean, "error": error, "tau_int": primary[name]["tau_int"], **info}
    return out


# -- output -----------------------------------------------------------------------------------------------


def format_value(mean: float, error: float) -> str:
    """0.73214(52): the error in units of the last two significant digits."""
    if not np.isfinite(error) or error <= 1e-12 * abs(mean):
        return f"{mean:.12g}"
    digits = max(0, 1 - int(math.floor(math.log10(error))))
    return f"{mean:.{digits}f}({round(error * 10**digits):d})"


def format_table(results: dict) -> str:
    lines = [f"{'observable':<16} {'value(error)':>22} {'tau_int':>14} {'ESS':>10}"]
    for name, r in results.items():
        tau = r.get("tau_int", float("nan"))
        tau_text = format_value(tau, r.get("tau_int_error", 0.0)) if "tau_int_error" in r else f"{tau:.3g}"
        ess = f"{r['ess']:.0f}" if "ess" in r else "-"
        lines.append(f"{name:<16} {format_value(r['mean'], r['error']):>22} {tau_text:>14} {ess:>10}")
    return "\n".join(lines)


def write_results_group(path: Path, results: dict, info: dict) -> bool:
    """/results/<name> with the statistics as attributes; skipped (False, with a warning) if a run may be writing."""
    age = time.time() - path.stat().st_mtime
    if info["status"] == "running" and age < LIVE_WRITER_SECONDS:
        warnings.warn(
            f"{path} is being written (status running, modified {age:.0f} s ago): /results not written", stacklevel=2
        )
        return False
    try:
        with h5py.File(path, "a", locking=True) as f:
            if "results" in f:
                del f["results"]
            group = f.create_group("results")
            group.attrs["n_measurements"] = info["n_measurements"]
            group.attrs["analyzed_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            for name, stats in results.items():
                sub = group.create_group(name)
                for key, value in stats.items():
                    sub.attrs[key] = value
    except (OSError, BlockingIOError) as exc:
        warnings.warn(f"{path} is in use ({exc}): /results not written", stacklevel=2)
        return False
    return True


def export_csv(samples: dict[str, np.ndarray], path: Path) -> None:
    """Raw samples in long format: chain, measurement, observable, value."""
    with open(path, "w", newline="") as handle:
        writer = csv_module.writer(handle)
        writer.writerow(["chain", "measurement", "observable", "value"])
        for name, chains in samples.items():
            for chain, row in enumerate(chains):
                writer.writerows((chain, k, name, repr(float(v))) for k, v in enumerate(row))


#: pyerrors' Γ-method refuses replicas shorter than this.
MIN_MEASUREMENTS = 5


def analyze_run(run_dir: Path, csv: bool = False) -> dict:
    """Analyse run_dir/run.h5: print a table, write results.json and /results; returns {observable: stats}."""
    run_dir = Path(run_dir)
    path = run_file(run_dir)
    samples, info = read_samples(path)
    if info["n_measurements"] < MIN_MEASUREMENTS:  # e.g. still thermalising: not an error, nothing to report yet
        print(
            f"{path} ({info['status']}): {info['n_measurements']} complete measurements; the Γ-method needs "
            f"at least {MIN_MEASUREMENTS} per chain, nothing to analyse yet"
        )
        return {}
    results = {name: gamma_analysis(chains, name) for name, chains in samples.items()}
    n_sites, temperature = model_constants(info)
    results.update(derived_quantities(samples, results, n_sites, temperature))
    status = f"{info['n_measurements']} measurements x {next(iter(samples.values())).shape[0]} chains"
    print(f"{path} ({info['status']}, {status})")
    print(format_table(results))
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_results_group(path, results, info)
    if csv:
        export_csv(samples, run_dir / "samples.csv")
    return results
