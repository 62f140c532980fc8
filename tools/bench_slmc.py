"""SLMC speed benchmark (issue 4): time per step by part, and effective samples per second.

For each lattice size it runs, one after the other on the same machine, real `slmc-hpc run` jobs on
`--ranks` MPI ranks: the exact local MC (one step = one sweep of N exact proposals), SLMC with the
linear model and SLMC with the transformer (one step = one outer step with `--inner-sweeps` inner
sweeps: compiled for the linear model, nested sub-chains of `--inner-block` moves for the transformer). From
each run.h5 it reads the per-rank timings of every measurement window, the wall time of every
phase, and the Γ-method τ_int / effective sample size of `slmc-hpc analyze`. ESS/s is
ESS / production wall time; the speed-up is that ratio against the exact local MC of the same size.

    .venv/bin/python tools/bench_slmc.py                 # L = 6 and 8 (about 10 minutes on 2 cores)
    .venv/bin/python tools/bench_slmc.py --sizes 4 --quick
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

from slmc_hpc.analysis import analyze_run
from slmc_hpc.config import config_from_dict, to_yaml
from slmc_hpc.parallel import launcher_env

REPO = Path(__file__).resolve().parents[1]
METHODS = ("exact", "linear", "transformer")
PARTS = ("inner", "exact", "measure", "io")


def job(
    method: str, size: int, quick: bool, chains_per_rank: int, inner_sweeps: int = 8, inner_block=None, seed: int = 7
) -> dict:
    """The configuration of one benchmark run (the physics point of the README: t=1, J=1, μ=0, T=0.05)."""
    scale = 0.2 if quick else 1.0
    exact = method == "exact"
    # Exact sweeps cost ~N diagonalisations, outer steps one: fewer exact steps for a similar wall time.
    measurements = int(scale * (400 if exact else 3000) * (6 / size) ** 2)
    inner_block = size * size // 2 if inner_block is None else inner_block
    return {
        "model": {"lx": size, "ly": size, "hoppings": {1: 1.0}, "J": 1.0, "mu": 0.0, "T": 0.05},
        # Both models read out over 6 shells; training as in tools/acceptance_table.py, shortened.
        "effective": {"kind": "linear" if method == "linear" else "transformer", "n_J": 6, "n_layers": 2, "n_att": 6},
        "training": {
            "warmup_sweeps": int(scale * 60),
            "rounds": 6 if method == "transformer" else 2,
            "outer_steps_per_round": int(scale * 50),
            "steps_per_round": 500 if method == "transformer" else 1,
            "batch_size": 128,
            "lr": 3e-3,
        },
        "sampler": {
            "kind": "exact" if exact else "slmc",
            "chains_per_rank": chains_per_rank,
            "inner_sweeps": inner_sweeps,
            "inner_block": inner_block,
            "thermalization": max(10, int(scale * (60 if exact else 300))),
            "measurements": max(50, measurements),
            "measure_every": 1,
        },
        "output": {"checkpoint_every": 3600},
        "seed": seed,
    }


def run_job(settings: dict, run_dir: Path, ranks: int) -> float:
    settings = {**settings, "output": {**settings["output"], "dir": str(run_dir)}}
    config_path = run_dir.with_suffix(".yaml")
    config_path.write_text(to_yaml(config_from_dict(settings)))
    env = launcher_env(threads=1)
    cmd = ["mpirun", "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "slmc_hpc", "run", str(config_path)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def summarize(run_dir: Path) -> dict:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        steps = int(f["samples"].attrs["n_measurements"])
        per_step = {part: float(np.mean(f["timing"][part][:, :steps].sum(axis=1))) / steps for part in PARTS}
        phase_seconds = {k[len("seconds_") :]: float(v) for k, v in f.attrs.items() if k.startswith("seconds_")}
        acceptance = float(np.mean(f["samples"]["acceptance"][:, :steps]))
    with contextlib.redirect_stdout(io.StringIO()):
        results = analyze_run(run_dir)
    production = phase_seconds["production"]
    training = phase_seconds.get("warmup", 0.0) + phase_seconds.get("train", 0.0)
    return {
        "steps": steps,
        "per_step": per_step,
        "step_seconds": production / steps,
        "training_seconds": training,
        "acceptance": acceptance,
        "tau_ms": results["ms"]["tau_int"],
        "tau_omega": results["omega"]["tau_int"],
        "ess_per_s": {name: results[name]["ess"] / production for name in ("ms", "omega")},
    }


def table(size: int, rows: dict[str, dict]) -> str:
    exact = rows["exact"]["ess_per_s"]
    lines = [
        f"L = {size} (N = {size * size}); step = sweep (exact) or outer step (SLMC); times in ms per step",
        "",
        "| method | steps | inner | exact ED | measure | I/O | training phase (s) | acceptance "
        "| τ_int(ms) | τ_int(Ω) | ESS/s ms | ESS/s Ω | speed-up ms | speed-up Ω |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for method, r in rows.items():
        p, e = r["per_step"], r["ess_per_s"]
        lines.append(
            f"| {method} | {r['steps']} | {1e3 * p['inner']:.2f} | {1e3 * p['exact']:.2f} | {1e3 * p['measure']:.2f} "
            f"| {1e3 * p['io']:.2f} | {r['training_seconds']:.1f} | {r['acceptance']:.3f} | {r['tau_ms']:.1f} "
            f"| {r['tau_omega']:.1f} | {e['ms']:.1f} | {e['omega']:.1f} | {e['ms'] / exact['ms']:.1f}× "
            f"| {e['omega'] / exact['omega']:.1f}× |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 8])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--chains-per-rank", type=int, default=4)
    parser.add_argument("--inner-sweeps", type=int, default=8, help="SLMC inner sweeps per outer step")
    parser.add_argument("--inner-block", type=int, help="transformer: moves per nested sub-chain (default N/2)")
    parser.add_argument("--seed", type=int, default=7, help="the runs' seed (another seed: other chains, same cost)")
    parser.add_argument("--quick", action="store_true", help="short runs (a smoke test, not a measurement)")
    parser.add_argument("--json", type=Path, help="also write the numbers to this file")
    args = parser.parse_args(argv)
    print(f"# SLMC benchmark: {args.ranks} ranks x {args.chains_per_rank} chains, 1 BLAS/torch thread per rank")
    block = "N/2" if args.inner_block is None else args.inner_block
    print(f"# SLMC: {args.inner_sweeps} inner sweeps per outer step; transformer sub-chains of {block} moves")
    print(f"# load average at start: {os.getloadavg()[0]:.2f} (other jobs on the machine make every number noisy)")
    everything = {}
    with tempfile.TemporaryDirectory(prefix="slmc-bench-") as tmp:
        for size in args.sizes:
            rows = {}
            for method in METHODS:
                run_dir = Path(tmp) / f"L{size}_{method}"
                settings = job(
                    method, size, args.quick, args.chains_per_rank, args.inner_sweeps, args.inner_block, args.seed
                )
                wall = run_job(settings, run_dir, args.ranks)
                rows[method] = {**summarize(run_dir), "wall_seconds": wall}
                print(f"#   L={size} {method}: {wall:.0f} s wall", flush=True)
            print(table(size, rows), flush=True)
            print()
            everything[size] = rows
    if args.json:
        args.json.write_text(json.dumps(everything, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
