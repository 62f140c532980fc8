"""Error analysis of a run: reads run.h5 (also while the run is still writing it) and never touches the sampler.

Each chain is one replica of a single Monte Carlo ensemble. Primary observables get the Γ-method of
pyerrors (Wolff 2004, automatic windowing): mean, error, integrated autocorrelation time τ_int in units of
measurements (τ_int = 1/2 for uncorrelated data) and the effective sample size ESS = n_total / (2 τ_int).
Non-linear functions of means (Binder ratio, susceptibilities) get a blocked jackknife, with blocks
several τ_int long so that the blocks are nearly independent. An observable that does not fluctuate beyond
rounding (CONSTANT_RTOL) is reported as constant: its value, error 0, no τ_int and no ESS. Every dataset is
read through its HDF5 checksums: a damaged file is an InputError naming the file and the dataset, and then
nothing is written.
"""

from __future__ import annotations

import csv as csv_module
import json
import math
import sys
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import pyerrors as pe
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from slmc_hpc.errors import InputError
from slmc_hpc.io.integrity import READ_ERRORS, DamagedFileError, damaged, read, read_attrs
from slmc_hpc.io.rundir import run_state
from slmc_hpc.io.runfile import plain_value

#: Jackknife blocks are this many (largest) τ_int long.
BLOCK_TAU = 4.0
#: A run.h5 modified this recently with status "running" is taken to have a live writer.
LIVE_WRITER_SECONDS = 120.0
#: An observable whose spread max - min is at most this times max(1, |mean|) is constant: rounding
#: noise (density = 1 exactly at μ = 0 and half filling, up to ~1e-16) must not get a τ_int or an ESS.
CONSTANT_RTOL = 1e-12
RUN_FILE = "run.h5"


def run_file(path: Path) -> Path:
    """The run.h5 of a run: `path` is its directory (output.dir) or the file itself; else InputError that says
    what `path` is instead (a job file, a folder without a run, nothing)."""
    path = Path(path)
    if path.is_file():
        if path.suffix != ".h5" and not h5py.is_hdf5(path):  # a damaged run.h5 is named as damaged, later
            hint = f"; to run it: slmc-hpc run {path}" if path.suffix in (".yaml", ".yml", ".json") else ""
            raise InputError(f"{path} is not a run: give a run directory (output.dir of a run) or its {RUN_FILE}{hint}")
        return path
    if not path.exists():
        raise InputError(f"run directory not found: {path} (expected the output.dir of a run, or its {RUN_FILE})")
    candidate = path / RUN_FILE
    if not candidate.is_file():
        raise InputError(f"{path} holds no {RUN_FILE}: not a run directory (or the run has not started yet)")
    return candidate


def read_samples(path: Path, attempts: int = 3) -> tuple[dict[str, np.ndarray], dict]:
    """See `_read_samples`; `path` may be the run directory (its run.h5 is read)."""
    path = run_file(path)
    return _read_samples_retrying(path, attempts)


def _read_samples_retrying(path: Path, attempts: int) -> tuple[dict[str, np.ndarray], dict]:
    """The complete measurements of every scalar observable ([n_chains, n_measurements] each) and run info.

    Only the first /samples.attrs["n_measurements"] columns are read: later ones may be half written.
    Every dataset read is checked (Fletcher-32) and the root attributes must parse: a damaged file is an
    InputError naming the file and the dataset or attribute. A failed read of a file that a live run is
    writing may be a collision with its flush, and is retried after a second.
    """
    for attempt in range(attempts):
        try:
            return _read_samples(path)
        except DamagedFileError:
            if attempt == attempts - 1 or not _maybe_live(path):
                raise
            time.sleep(1.0)
    raise AssertionError("unreachable")


def _maybe_live(path: Path) -> bool:
    """True if `path` says status running (or cannot say), i.e. a writer may be in the middle of a flush."""
    try:
        with h5py.File(path, "r", locking=False) as f:
            return plain_value(f.attrs.get("status", "running")) == "running"
    except READ_ERRORS:
        return True


def _open(path: Path) -> h5py.File:
    try:
        return h5py.File(path, "r", locking=False)
    except READ_ERRORS as exc:
        raise damaged(path, "the HDF5 superblock or root group", exc) from None


def _read_samples(path: Path) -> tuple[dict[str, np.ndarray], dict]:
    with _open(path) as f:
        attrs = {key: plain_value(value) for key, value in read_attrs(f).items()}
        try:
            has_samples = "samples" in f
            group = f["samples"] if has_samples else None
        except READ_ERRORS as exc:
            raise damaged(path, "/samples", exc) from None
        if group is None:
            raise InputError(f"{path} has no /samples group (the run has not started measuring)")
        n_meas = int(read_attrs(group).get("n_measurements", 0))
        config_yaml = str(attrs.get("config_yaml", ""))
        config, run_config = _parse_config(path, config_yaml)
        declared = [o.name for o in run_config.system.observables(run_config) if not o.shape] if run_config else []
        try:
            present = [n for n in group if isinstance(group[n], h5py.Dataset)]
            names = [n for n in (*declared, "acceptance") if n in present]
            names += sorted(n for n in present if n not in names and group[n].ndim == 2)
            stored = {name: group[name].shape[1] for name in names}
        except READ_ERRORS as exc:
            raise damaged(path, "the /samples datasets", exc) from None
        for name, columns in stored.items():
            if columns < n_meas:
                raise DamagedFileError(
                    f"{path}: /samples/{name} holds {columns} measurements, but /samples says {n_meas} are "
                    "complete; the file is damaged"
                )
        samples = {name: np.asarray(read(group[name], np.s_[:, :n_meas]), dtype=np.float64) for name in names}
        info = {
            "path": path,
            "status": run_state(path.parent, str(attrs.get("status", "unknown"))),
            "config_yaml": config_yaml,
            "config": config,  # parsed once, for analysis and plots
            "run_config": run_config,  # validated: its system declares the observables (None if it cannot be)
            "n_measurements": n_meas,
        }
    return samples, info


def _parse_config(path: Path, config_yaml: str):
    """(the run's configuration as a dict, validated Config or None where this code cannot validate it)."""
    from slmc_hpc.config import config_from_dict
    from slmc_hpc.errors import ConfigError

    try:
        config = YAML(typ="safe").load(config_yaml or "{}") or {}
        if not isinstance(config, dict):
            raise ValueError(f"a {type(config).__name__}, not a mapping")
    except (YAMLError, ValueError) as exc:
        raise DamagedFileError(
            f"{path}: root attribute config_yaml does not parse ({exc}); the file is damaged"
        ) from None
    try:
        return config, config_from_dict(_without_missing_files(config), source=str(path))
    except ConfigError as exc:
        sys.stderr.write(
            f"slmc-hpc: warning: {path}: its configuration is not valid for this code ({exc}); "
            "derived quantities and labels are left out\n"
        )
        return config, None


def _without_missing_files(config: dict) -> dict:
    """The run's configuration, where the files it read when it started (effective.load, init) may be gone."""
    effective = config.get("effective")
    if isinstance(effective, dict):
        effective = {k: (None if k in ("load", "init") else v) for k, v in effective.items()}
        return {**config, "effective": effective}
    return config


# -- Γ-method for primary observables ---------------------------------------------------------------------


def is_constant(chains: np.ndarray) -> bool:
    """True if max - min <= CONSTANT_RTOL * max(1, |mean|): the spread is rounding noise, not physics."""
    return bool(np.ptp(chains) <= CONSTANT_RTOL * max(1.0, abs(float(np.mean(chains)))))


def gamma_analysis(chains: np.ndarray, name: str = "obs") -> dict:
    """Γ-method statistics of one observable, chains [n_chains, n_measurements] treated as replicas."""
    chains = np.atleast_2d(np.asarray(chains, dtype=np.float64))
    n_chains, n_meas = chains.shape
    n_total = n_chains * n_meas
    mean = float(chains.mean())
    base = {"n_chains": n_chains, "n_measurements": n_meas, "mean": mean}
    if is_constant(chains):
        # No fluctuations beyond rounding (density 1 at half filling, acceptance 1 throughout): the value is
        # exact, and a τ_int or an ESS computed from rounding noise would be fiction.
        return {**base, "error": 0.0, "constant": True, "tau_int": None, "tau_int_error": None, "ess": None}
    if n_meas < 2:
        return {**base, "error": float("nan"), "tau_int": None, "tau_int_error": None, "ess": None}
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


def derived_quantities(samples: dict[str, np.ndarray], primary: dict, derived) -> dict:
    """The system's derived quantities (`core.protocols.Derived`), each with a blocked-jackknife error.

    The blocks follow the τ_int of the first ingredient's observable; a quantity whose observables are
    missing (not finite, or not recorded) is left out.
    """
    out = {}
    for quantity in derived:
        names = [name for name, _ in quantity.ingredients]
        if any(name not in samples or samples[name].shape[1] < 2 for name in names):
            continue
        first = samples[names[0]]
        tau = primary[names[0]]["tau_int"] or 0.5  # None: constant data, every block is as good as independent
        bins, length = jackknife_blocks(*first.shape, tau)
        arrays = [samples[name] ** power for name, power in quantity.ingredients]
        mean, error = jackknife(quantity.function, arrays, bins, length)
        out[quantity.name] = {
            "mean": mean,
            "error": error,
            "tau_int": primary[names[0]]["tau_int"],
            "n_chains": first.shape[0],
            "n_measurements": first.shape[1],
            "jackknife_blocks": first.shape[0] * bins,
        }
    return out


def energy_violation_check(samples: dict[str, np.ndarray]) -> dict:
    """<exp(-dH)> of the recorded trajectories (an HMC run records `dH`): 1 within errors, or the MD is wrong.

    It is exact for any reversible, area-preserving MD, whatever the step size (Creutz 1988).
    """
    if "dH" not in samples:
        return {}
    return {"exp_minus_dH": gamma_analysis(np.exp(-samples["dH"]), "exp_minus_dH")}


# -- field observables (shape != ()) ----------------------------------------------------------------------


def field_chain_means(path: Path, name: str, block: int = 256, skip: int = 0) -> np.ndarray | None:
    """Per chain, the mean over complete measurements (after the first `skip`) of the field observable
    `/samples/<name>` [C, *shape].

    Read in blocks of measurements (the dataset can be large), through the checksums; None if the run has
    no such dataset or no complete measurement.
    """
    with _open(path) as f:
        try:
            if f"samples/{name}" not in f:
                return None
            data, n = f["samples"][name], int(f["samples"].attrs.get("n_measurements", 0))
        except READ_ERRORS as exc:
            raise damaged(path, f"/samples/{name}", exc) from None
        if n <= skip:
            return None
        chain_sums = sum(
            np.asarray(read(data, np.s_[:, k : min(k + block, n)])).sum(axis=1) for k in range(skip, n, block)
        )
    return chain_sums / (n - skip)


def field_views(info: dict) -> dict:
    """The run's system's views of its field observables, {name: FieldView} (none if the config is unknown)."""
    run_config = info.get("run_config")
    return dict(run_config.system.field_views(run_config)) if run_config is not None else {}


# -- output -----------------------------------------------------------------------------------------------


def format_value(mean: float, error: float | None) -> str:
    """0.73214(52): the error in units of the last two significant digits."""
    if error is None or not np.isfinite(error) or error <= 1e-12 * abs(mean):
        return f"{mean:.12g}"
    digits = max(0, 1 - int(math.floor(math.log10(error))))
    return f"{mean:.{digits}f}({round(error * 10**digits):d})"


def format_table(results: dict) -> str:
    lines = [f"{'observable':<16} {'value(error)':>22} {'tau_int':>14} {'ESS':>10} {'R_hat':>7}"]
    for name, r in results.items():
        tau = r.get("tau_int")
        if r.get("constant"):
            tau_text = "constant"
        elif tau is None:
            tau_text = "-"
        elif r.get("tau_int_error") is not None:
            tau_text = format_value(tau, r["tau_int_error"])
        else:
            tau_text = f"{tau:.3g}"
        ess = f"{r['ess']:.0f}" if r.get("ess") is not None else "-"
        r_hat = f"{r['r_hat']:.3f}" if r.get("r_hat") is not None else "-"
        lines.append(f"{name:<16} {format_value(r['mean'], r['error']):>22} {tau_text:>14} {ess:>10} {r_hat:>7}")
    return "\n".join(lines)


def write_results_group(path: Path, results: dict, info: dict) -> bool:
    """/results/<name> with the statistics as attributes; skipped (False, with a warning) if a run may be writing.

    Only called after every dataset the results come from was read through its checksums.
    """
    age = time.time() - path.stat().st_mtime
    if info["status"] == "running" and age < LIVE_WRITER_SECONDS:
        warnings.warn(
            f"{path} is being written (status running, modified {age:.0f} s ago): /results not written", stacklevel=2
        )
        return False
    try:
        with h5py.File(path, "r", locking=False) as f:  # the old /results is read before it is replaced
            if "results" in f:
                for group in (f["results"], *f["results"].values()):
                    read_attrs(group)
    except READ_ERRORS + (InputError,) as exc:
        warnings.warn(f"{path}: the old /results cannot be read ({exc}): /results not written", stacklevel=2)
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
                    if value is not None:  # HDF5 has no null: a missing attribute is "not defined" (constant data)
                        sub.attrs[key] = value
    except BlockingIOError as exc:
        warnings.warn(f"{path} is in use ({exc}): /results not written", stacklevel=2)
        return False
    except READ_ERRORS as exc:  # in use, or the old /results is damaged (its samples were read fine)
        warnings.warn(f"{path}: /results cannot be replaced ({exc}): /results not written", stacklevel=2)
        return False
    return True


#: Columns of results.csv, one row per observable; an empty cell is "not defined" (e.g. τ_int of a constant).
CSV_COLUMNS = ("observable", "mean", "error", "tau_int", "tau_int_error", "ess", "r_hat", "n_chains", "n_measurements")


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return repr(float(value)) if isinstance(value, float) else str(value)


def export_results_csv(results: dict, path: Path) -> Path:
    """The results table as CSV: one row per observable, the columns of CSV_COLUMNS."""
    with open(path, "w", newline="") as handle:
        writer = csv_module.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for name, stats in results.items():
            writer.writerow([name, *(_cell(stats.get(key)) for key in CSV_COLUMNS[1:])])
    return path


def export_samples_csv(samples: dict[str, np.ndarray], path: Path) -> Path:
    """Raw samples in long format: chain, measurement, observable, value."""
    with open(path, "w", newline="") as handle:
        writer = csv_module.writer(handle)
        writer.writerow(["chain", "measurement", "observable", "value"])
        for name, chains in samples.items():
            for chain, row in enumerate(chains):
                writer.writerows((chain, k, name, repr(float(v))) for k, v in enumerate(row))
    return path


def finite_samples(samples: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """The observables whose complete measurements are all finite; the others are reported on stderr.

    A NaN or inf in a complete column is never physics: an overflow, or a column that was declared complete
    and never written (the fill value is NaN). Statistics of it would be NaN or garbage.
    """
    kept = {}
    for name, chains in samples.items():
        bad = int(chains.size - np.count_nonzero(np.isfinite(chains)))
        if bad:
            sys.stderr.write(
                f"slmc-hpc: warning: {path}:/samples/{name} holds {bad} non-finite values (nan or inf) among "
                f"{chains.size}: {name} is left out of the results\n"
            )
        else:
            kept[name] = chains
    return kept


#: pyerrors' Γ-method refuses replicas shorter than this.
MIN_MEASUREMENTS = 5


def skip_and_bin(samples: dict[str, np.ndarray], skip: int = 0, bin_size: int = 1) -> dict[str, np.ndarray]:
    """Drop the first `skip` measurements of every chain, then average consecutive blocks of `bin_size` (a
    remainder at the end is dropped). Rebinning leaves means and errors as they are and divides τ_int by about
    `bin_size`; skipping removes what was not yet in equilibrium."""
    if skip < 0 or bin_size < 1:
        raise InputError(f"--skip must be >= 0 and --bin >= 1, got {skip} and {bin_size}")
    out = {}
    for name, chains in samples.items():
        kept = chains[:, skip:]
        blocks = kept.shape[1] // bin_size
        out[name] = kept[:, : blocks * bin_size].reshape(kept.shape[0], blocks, bin_size).mean(axis=2)
    return out


#: Split-R̂ above this is reported as chains that disagree (Gelman & Rubin's classic threshold).
R_HAT_WARNING = 1.1


def split_r_hat(chains: np.ndarray) -> float | None:
    """Split-R̂ of chains [C, n]: every chain halved, then sqrt of (pooled variance estimate / within-chain
    variance). Near 1 when the chains sample the same distribution; well above 1 when they disagree (a chain
    stuck, not thermalised, a bug). None for fewer than 4 measurements or no variance."""
    chains = np.asarray(chains, dtype=np.float64)
    half = chains.shape[1] // 2
    if half < 2:
        return None
    parts = np.concatenate([chains[:, :half], chains[:, half : 2 * half]])
    within = parts.var(axis=1, ddof=1).mean()
    if not within > 0:
        return None
    between = half * parts.mean(axis=1).var(ddof=1)
    pooled = (half - 1) / half * within + between / half
    return float(np.sqrt(pooled / within))


def analyze_run(run: Path, csv: bool = False, samples_csv: bool = False, skip: int = 0, bin_size: int = 1) -> dict:
    """Analyse a run (its directory or run.h5): print a table, write results.json and /results next to run.h5.

    csv: also results.csv (the table) and the field observables' CSV files (structure_factor.csv and
    correlation.csv for spins); samples_csv: also the raw samples as samples.csv. `skip` and `bin_size`: see
    `skip_and_bin`. Every observable gets split-R̂ (`r_hat`); chains that disagree (R̂ > 1.1) are warned about.
    Returns {observable: stats}. Nothing is written unless every dataset used was read without a checksum error
    (a damaged file is an InputError naming the dataset).
    """
    path = run_file(run)
    out_dir = path.parent
    samples, info = read_samples(path)
    samples = skip_and_bin(samples, skip, bin_size) if (skip or bin_size > 1) else samples
    usable = next(iter(samples.values())).shape[1] if samples else 0
    if usable < MIN_MEASUREMENTS:  # e.g. still thermalising: not an error, nothing to report yet
        print(
            f"{path} ({info['status']}): {usable} usable measurements (of {info['n_measurements']}); the "
            f"Γ-method needs at least {MIN_MEASUREMENTS} per chain, nothing to analyse yet"
        )
        return {}
    views = field_views(info)
    fields = {name: field_chain_means(path, name, skip=skip) for name in views}
    fields = {name: means for name, means in fields.items() if means is not None}
    n_chains = next(iter(samples.values())).shape[0]
    finite = finite_samples(samples, path)
    results = {name: gamma_analysis(chains, name) for name, chains in finite.items()}
    results.update(energy_violation_check(finite))
    for name, chains in finite.items():
        results[name]["r_hat"] = None if results[name].get("constant") else split_r_hat(chains)
    run_config = info["run_config"]
    if run_config is not None:
        results.update(derived_quantities(finite, results, run_config.system.derived(run_config)))
    binned = f", binned by {bin_size}" if bin_size > 1 else ""
    skipped = f", first {skip} skipped" if skip else ""
    print(f"{path} ({info['status']}, {usable} measurements x {n_chains} chains{skipped}{binned})")
    print(format_table(results))
    disagree = [f"{n} (R̂ = {r['r_hat']:.2f})" for n, r in results.items() if (r.get("r_hat") or 0) > R_HAT_WARNING]
    if disagree:
        sys.stderr.write(
            f"slmc-hpc: warning: {path}: the chains disagree on {', '.join(disagree)}: not thermalised, or stuck; "
            "look at the time series (slmc-hpc plot), skip the start (--skip N) or measure longer\n"
        )
    for name, means in fields.items():
        for line in views[name].lines(means, format_value):
            print(line)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    write_results_group(path, results, info)
    written = []
    if csv:
        written.append(export_results_csv(results, out_dir / "results.csv"))
        for name, means in fields.items():
            written.extend(views[name].write_csv(means, out_dir))
    if samples_csv:
        written.append(export_samples_csv(samples, out_dir / "samples.csv"))
    for file in written:
        print(f"wrote {file}")
    return results
