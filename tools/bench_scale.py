"""Self-learning that scales (issue 9): whole runs, training included, at the lattice sizes users come for.

For each size it runs, one after the other on the same machine, real `slmc-hpc run` jobs on
`--ranks` MPI ranks:

- transformer SLMC: the embedded defaults with only `model.lx`, `model.ly` and `output.dir` changed
  (the job a new user writes);
- linear SLMC over all distance shells, the same job with `effective.kind: linear` (the strongest
  linear model, with the same self-learning and the same tuned inner chain);
- the exact local MC, short (`--exact-sweeps`): its time per sweep is measured; its τ_int(ms) comes
  from the Γ-method where the run is at least 20 τ long, and is otherwise taken from a long exact run
  at L = `--tau-size` (8: 200 sweeps, about 2 minutes), said in the table. τ of the local MC in sweeps
  grows with L, so this underestimates the exact MC's cost at larger L: the speed-ups are lower bounds;
- exact HMC (`hmc`: eigenvector forces, Omelyan, md_steps tuned for acceptance 0.8, the strong exact
  baseline; `--hmc-lengths` runs it at several trajectory lengths and the best one counts) and self-learning
  HMC (`slhmc-transformer`, `slhmc-linear`: the same training as SLMC, then trajectories under H_eff's force,
  length and steps tuned by ESJD per second), with `--hmc-measurements` trajectories and
  `--hmc-chains-per-rank` chains (an exact trajectory costs 2 md_steps `eigh` with Omelyan).

Every speed-up is given against the exact local MC and against the best exact method of the size (the
one with the most production ESS/s of ms: exact HMC from L = 8 on). A diagonalisation is one `eigvalsh`
or one `eigh` (a force).

Per run it prints the self-learning time (warmup + train + tune phases), production acceptance,
τ_int(ms), production ESS/s of ms, ESS(ms) per exact diagonalisation (training, tuning,
thermalization and production all counted), and the wall time to ESS(ms) = 1000 including
training (self-learning + thermalization + 1000 / production ESS rate). Ratios are against the
exact local MC measured in the same invocation.

    .venv/bin/python tools/bench_scale.py --hmc-lengths 1 1.5 2  # L = 8, 12, 16 (about 100 minutes on 2 cores)
    .venv/bin/python tools/bench_scale.py --sizes 12 --json bench_out/L12.json
    .venv/bin/python tools/bench_scale.py --sizes 24 --models transformer --measurements 300 \
        --exact-sweeps 1 --exact-chains-per-rank 1            # L = 24 (about an hour)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
from ruamel.yaml import YAML

from slmc_hpc.analysis import analyze_run
from slmc_hpc.config import config_from_dict, to_yaml
from slmc_hpc.parallel import launcher_env

TARGET_ESS = 1000.0
#: The methods of a row: (sampler.kind, effective.kind or None).
METHODS = {
    "transformer": ("slmc", "transformer"),
    "linear": ("slmc", "linear"),
    "hmc": ("hmc", None),
    "slhmc-transformer": ("slhmc", "transformer"),
    "slhmc-linear": ("slhmc", "linear"),
}


def run_job(settings: dict, run_dir: Path, ranks: int, log: Path | None = None) -> float:
    """One real `slmc-hpc run` of `settings` on `ranks` MPI ranks (1 thread each) into `run_dir`; its wall seconds.
    The run's stderr goes to `log` (default run_dir/stderr.log) when it succeeds; a failure stops the bench."""
    config_path = run_dir.parent / f"{run_dir.name}.yaml"  # names may hold dots (hmc τ1.5)
    config_path.write_text(to_yaml(config_from_dict({**settings, "output": {"dir": str(run_dir)}})))
    cmd = ["mpirun", "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "slmc_hpc", "run", str(config_path)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=launcher_env(threads=1), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    (log or run_dir / "stderr.log").write_text(proc.stderr)
    return time.perf_counter() - start


def results_of(run_dir: Path) -> dict:
    with contextlib.redirect_stdout(io.StringIO()):
        return analyze_run(run_dir)


def summarize_slmc(run_dir: Path, wall: float) -> dict:
    """An SLMC, exact HMC or SLHMC run: its phases' times, acceptance, τ_int and ESS of ms and Ω, ESS per
    diagonalisation (a trajectory of exact HMC costs one `eigh` per new force per chain: 2 md_steps with Omelyan,
    md_steps with leapfrog, as its first force and its test reuse diagonalisations; SLMC and SLHMC steps one)."""
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        attrs = f.attrs
        seconds = {k[len("seconds_") :]: float(v) for k, v in attrs.items() if k.startswith("seconds_")}
        n_chains, steps = f["samples"]["omega"].shape
        acceptance = float(np.mean(f["samples"]["acceptance"][()]))
        rounds = f["training"]["round_samples"] if "round_samples" in f.get("training", {}) else []
        training_samples = float(rounds[-1]) if len(rounds) else 0.0
        tune_steps = int(attrs.get("tune_outer_steps", attrs.get("tune_trajectories", 0)))
        if "inner_sweeps" in attrs:
            inner = f"{int(attrs['inner_sweeps'])} / {int(attrs['inner_block'])}"
        else:
            inner = f"τ {float(attrs['trajectory_length']):g}, {int(attrs['md_steps'])} steps"
        config = config_from_dict(YAML(typ="safe", pure=True).load(str(attrs["config_yaml"])))
        md_steps = int(attrs.get("md_steps", 0))
    results = results_of(run_dir)
    self_learning = sum(seconds.get(p, 0.0) for p in ("warmup", "train", "freeze", "tune"))
    per_step = 1
    if config.sampler.kind == "hmc":
        per_step = 2 * md_steps if config.sampler.integrator == "omelyan" else md_steps
    evaluations = training_samples + n_chains * per_step * (tune_steps + config.sampler.thermalization + steps)
    rate = results["ms"]["ess"] / seconds["production"]
    return {
        "wall": wall,
        "self_learning": self_learning,
        "thermalize": seconds.get("thermalize", 0.0),
        "production": seconds["production"],
        "acceptance": acceptance,
        "tau_ms": results["ms"]["tau_int"],
        "ess_ms": results["ms"]["ess"],
        "ess_per_s": rate,
        "ess_per_s_omega": results["omega"]["ess"] / seconds["production"],
        "tau_omega": results["omega"]["tau_int"],
        "ess_per_evaluation": results["ms"]["ess"] / evaluations,
        "time_to_target": self_learning + seconds.get("thermalize", 0.0) + TARGET_ESS / rate,
        "inner": inner,
    }


def summarize_exact(run_dir: Path, wall: float, tau_fallback: tuple[float, int] | None) -> dict:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        seconds = float(f.attrs["seconds_production"])
        n_chains, sweeps = f["samples"]["omega"].shape
    # A few sweeps at large L are too short for the Γ-method: analysis then gives ms no tau_int at all.
    try:
        tau = float(results_of(run_dir).get("ms", {}).get("tau_int", np.nan))
    except Exception as exc:  # noqa: BLE001 - any analysis failure means "no τ from this run"
        print(f"#   {run_dir.name}: no τ_int from {sweeps} sweeps ({exc})", flush=True)
        tau = np.nan
    source = "measured"
    if not np.isfinite(tau) or sweeps < 20 * tau:
        if tau_fallback is None:
            raise SystemExit(f"{run_dir}: {sweeps} sweeps are too few for τ_int (give --exact-sweeps)")
        tau, source = tau_fallback[0], f"from L = {tau_fallback[1]}"
    per_sweep = seconds / sweeps
    return {
        "wall": wall,
        "seconds_per_sweep": per_sweep,
        "tau_ms": tau,
        "tau_source": source,
        "ess_per_s": n_chains / (2.0 * tau * per_sweep),
        "ess_per_s_omega": np.nan,
        "time_to_target": TARGET_ESS * 2.0 * tau * per_sweep / n_chains,
        "ess_per_evaluation": 1.0 / (2.0 * tau * run_sites(run_dir)),
    }


def run_sites(run_dir: Path) -> int:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        return int(np.prod(f["samples"]["sq"].shape[2:]))


def table(size: int, exact: dict, rows: dict[str, dict]) -> str:
    best_exact = max([exact, *(r for name, r in rows.items() if name.startswith("hmc"))], key=lambda r: r["ess_per_s"])
    best_name = "exact HMC" if best_exact is not exact else "exact local MC"
    lines = [
        f"L = {size} (N = {size * size}); exact local MC: {1e3 * exact['seconds_per_sweep']:.0f} ms per sweep, "
        f"τ_int(ms) = {exact['tau_ms']:.1f} sweeps ({exact['tau_source']}), "
        f"{exact['time_to_target'] / 60:.1f} min to ESS(ms) = 1000; best exact method: {best_name}",
        "",
        "| method | wall (s) | self-learning (s) | share | inner sweeps/block or trajectory | acceptance | τ_int(ms) "
        "| τ_int(Ω) | ESS(ms) | ESS/s ms | ESS/s Ω | ESS per ED | min to ESS 1000 | × local MC (production) "
        "| × local MC (with training) | × best exact (production) | × best exact (with training) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['wall']:.0f} | {r['self_learning']:.0f} | {r['self_learning'] / r['wall']:.0%} "
            f"| {r['inner']} | {r['acceptance']:.3f} | {r['tau_ms']:.2f} | {r['tau_omega']:.2f} | {r['ess_ms']:.0f} "
            f"| {r['ess_per_s']:.2f} | {r['ess_per_s_omega']:.2f} | {r['ess_per_evaluation']:.3f} "
            f"| {r['time_to_target'] / 60:.1f} | {r['ess_per_s'] / exact['ess_per_s']:.0f}× "
            f"| {exact['time_to_target'] / r['time_to_target']:.0f}× | {r['ess_per_s'] / best_exact['ess_per_s']:.1f}× "
            f"| {best_exact['time_to_target'] / r['time_to_target']:.1f}× |"
        )
    if "transformer" in rows and "linear" in rows:
        ratio = rows["transformer"]["ess_per_s"] / rows["linear"]["ess_per_s"]
        lines += ["", f"transformer / all-shell linear, production ESS/s of ms: {ratio:.2f}"]
    fastest = max(rows, key=lambda name: rows[name]["ess_per_s"])
    soonest = min(rows, key=lambda name: rows[name]["time_to_target"])
    lines += [f"fastest in production: {fastest}; soonest to ESS(ms) = 1000 with training: {soonest}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 12, 16])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--models", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--hmc-measurements", type=int, default=200, help="trajectories of the (SL)HMC runs")
    parser.add_argument("--hmc-chains-per-rank", type=int, default=4, help="chains per rank of the exact HMC runs")
    parser.add_argument(
        "--hmc-lengths",
        type=float,
        nargs="+",
        help="exact HMC: one run per trajectory length (rows 'hmc τ<length>'; default: one run, the job's auto)",
    )
    parser.add_argument(
        "--exact-sweeps",
        type=int,
        nargs="+",
        help="exact local MC sweeps per size (default: --tau-sweeps at --tau-size, 25 up to L = 12, 4 beyond)",
    )
    parser.add_argument(
        "--exact-chains-per-rank", type=int, default=2, help="chains per rank of the short exact runs (1 at L = 24)"
    )
    parser.add_argument(
        "--measurements", type=int, help="production measurements of the SLMC runs (default: the job's, 1000)"
    )
    parser.add_argument("--tau-size", type=int, default=8, help="lattice of the long exact run that gives τ_int")
    parser.add_argument("--tau-sweeps", type=int, default=200, help="sweeps of that run")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    parser.add_argument("--keep", type=Path, help="keep the run directories here (default: a temporary directory)")
    args = parser.parse_args(argv)
    changed = "lx = ly = L" + (f", sampler.measurements = {args.measurements}" if args.measurements else "")
    print(f"# bench_scale: {args.ranks} ranks, default job with {changed}; 1 BLAS/torch thread per rank")
    print(f"# load average at start: {os.getloadavg()[0]:.2f} (other jobs on the machine make every number noisy)")
    everything, tau_fallback = {}, None
    with tempfile.TemporaryDirectory(prefix="slmc-scale-") as tmp:
        base = args.keep or Path(tmp)
        base.mkdir(parents=True, exist_ok=True)
        if args.tau_size not in args.sizes:
            run_dir = base / f"L{args.tau_size}_exact_tau"
            tau_job = {
                "model": {"lx": args.tau_size, "ly": args.tau_size},
                "sampler": {
                    "kind": "exact",
                    "chains_per_rank": 2,
                    "thermalization": 20,
                    "measurements": args.tau_sweeps,
                },
            }
            wall = run_job(tau_job, run_dir, args.ranks)
            tau = summarize_exact(run_dir, wall, None)["tau_ms"]
            tau_fallback = (tau, args.tau_size)
            print(
                f"#   L={args.tau_size} exact, {args.tau_sweeps} sweeps: τ_int(ms) = {tau:.2f} ({wall:.0f} s)",
                flush=True,
            )
        for index, size in enumerate(args.sizes):
            lattice = {"model": {"lx": size, "ly": size}}
            rows = {}
            variants = []  # (row name, method, sampler settings beyond its kind)
            for name in args.models:
                if name == "hmc" and args.hmc_lengths:
                    variants += [(f"hmc τ{t:g}", name, {"trajectory_length": t}) for t in args.hmc_lengths]
                else:
                    variants.append((name, name, {}))
            for row, name, sampler in variants:
                run_dir = base / f"L{size}_{row.replace(' ', '_')}"
                kind, effective = METHODS[name]
                settings = {**lattice, "sampler": {"kind": kind, **sampler}}
                if effective:
                    settings["effective"] = {"kind": effective}
                if kind in ("hmc", "slhmc"):
                    settings["sampler"]["measurements"] = args.hmc_measurements
                    if kind == "hmc":
                        settings["sampler"]["chains_per_rank"] = args.hmc_chains_per_rank
                elif args.measurements:
                    settings["sampler"]["measurements"] = args.measurements
                wall = run_job(settings, run_dir, args.ranks)
                rows[row] = summarize_slmc(run_dir, wall)
                print(f"#   L={size} {row}: {wall:.0f} s wall", flush=True)
            default_sweeps = args.tau_sweeps if size == args.tau_size else 25 if size <= 12 else 4
            sweeps = args.exact_sweeps[index] if args.exact_sweeps else default_sweeps
            run_dir = base / f"L{size}_exact"
            exact_job = {  # only its time per sweep is used beyond L = 12: no thermalization there
                **lattice,
                "sampler": {
                    "kind": "exact",
                    "chains_per_rank": args.exact_chains_per_rank,
                    "thermalization": 2 if size <= 12 else 0,
                    "measurements": sweeps,
                },
            }
            wall = run_job(exact_job, run_dir, args.ranks)
            exact = summarize_exact(run_dir, wall, tau_fallback)
            if exact["tau_source"] == "measured":
                tau_fallback = (exact["tau_ms"], size)
            print(f"#   L={size} exact: {wall:.0f} s wall", flush=True)
            print(table(size, exact, rows), "\n", flush=True)
            everything[size] = {"exact": exact, **rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
