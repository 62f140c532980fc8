"""Many runs at once: the runs behind a list of paths, one merged table of their results, and the Python loader.

A path is a run directory, its run.h5, or a scan directory (with `scan.yaml`: its points). The merged table has
one row per run: where it is, its system's parameters (`System.parameters`: L, T, J, μ for spins; L, β, m, Nf
for SU(2)), the system and the samplers, then mean, error, τ_int and ESS of every observable and derived
quantity. `slmc-hpc analyze DIR...` writes it as CSV (and Parquet where pyarrow is installed);
`slmc_hpc.load(...)` returns it as a pandas DataFrame, and `slmc_hpc.load_samples(run)` a run's samples.

>>> import slmc_hpc
>>> table = slmc_hpc.load("runs/scan")                   # one row per run
>>> table[table.L == "8x8"].plot(x="T", y="ms", yerr="ms_error")
>>> samples = slmc_hpc.load_samples("runs/scan/T0.05")   # {"omega": [chains, measurements], ...}
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from slmc_hpc.errors import InputError

STATISTICS = ("mean", "error", "tau_int", "ess")
RUN_FILE = "run.h5"


def run_paths(paths) -> list[Path]:
    """The run.h5 of every run behind `paths` (run directories, run.h5 files, scan directories), in order."""
    from slmc_hpc.analysis import run_file
    from slmc_hpc.scan import SCAN_FILE, read_index

    if isinstance(paths, str | Path):
        paths = [paths]
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir() and (path / SCAN_FILE).is_file():
            for point in read_index(path):
                candidate = Path(point["dir"]) / RUN_FILE
                if candidate.is_file():
                    found.append(candidate)
        else:
            found.append(run_file(path))
    if not found:
        raise InputError(f"no runs under {', '.join(map(str, paths))} (no run.h5 yet)")
    return found


def describe_run(info: dict) -> dict:
    """The columns that say which run a row is: its system's parameters, the system and the samplers."""
    config = info.get("run_config")
    row = {"run": str(Path(info["path"]).parent)}
    if config is None:
        return row
    row.update(config.system.parameters(config))
    row.update(system=config.model.kind, sampler=config.sampler.kind)
    learns = config.system.learns(config) or config.effective.load is not None
    row["effective"] = config.effective.kind if learns else ""
    row["evaluator"] = config.evaluator.kind
    return row


def merged_rows(paths, skip: int = 0, bin_size: int = 1, quiet: bool = True) -> list[dict]:
    """Analyse every run behind `paths` (each writes its results.json) and give one row per run."""
    from slmc_hpc.analysis import analyze_run, read_samples

    rows = []
    for path in run_paths(paths):
        output = io.StringIO()
        with contextlib.redirect_stdout(output) if quiet else contextlib.nullcontext():
            results = analyze_run(path, skip=skip, bin_size=bin_size)
        _, info = read_samples(path)
        row = {**describe_run(info), "status": info["status"], "measurements": info["n_measurements"]}
        for name, stats in results.items():
            for key in STATISTICS:
                value = stats.get(key)
                row[name if key == "mean" else f"{name}_{key}"] = np.nan if value is None else value
        rows.append(row)
    return rows


def load(*paths, skip: int = 0, bin_size: int = 1):
    """The merged results of the runs behind `paths` as a pandas DataFrame, one row per run.

    Columns: run, the system's parameters, system, sampler, effective, evaluator, status, measurements, then per
    observable `<name>` (the mean), `<name>_error`, `<name>_tau_int`, `<name>_ess`. `skip` drops the first
    measurements of every chain, `bin_size` averages consecutive ones (as `slmc-hpc analyze --skip --bin`).
    """
    import pandas as pd

    return pd.DataFrame(merged_rows(paths or ("runs",), skip, bin_size))


def load_samples(run) -> dict[str, np.ndarray]:
    """Every recorded number of a run: {observable: [n_chains, n_measurements]} (complete measurements only)."""
    from slmc_hpc.analysis import read_samples, run_file

    samples, _ = read_samples(run_file(Path(run)))
    return samples


def write_table(rows: list[dict], path: Path) -> list[Path]:
    """The merged table as CSV, and as Parquet next to it where pyarrow is installed; the paths written."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    path = Path(path)
    frame.to_csv(path, index=False)
    written = [path]
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return written
    parquet = path.with_suffix(".parquet")
    frame.to_parquet(parquet, index=False)
    return [*written, parquet]
