"""Exact HMC of SU(2) with staggered fermions: dense log det against pseudofermions with CG, by lattice size.

For each size and evaluator it runs a real `slmc-hpc run` job on `--ranks` MPI ranks, one after the
other, at the seeds' couplings (beta = 2.7, m = 0.3, Nf = 4) with the defaults: Omelyan, trajectory
length 1, `md_steps: auto` (chosen for acceptance 0.8 before thermalisation). It reports the chosen MD
steps, the acceptance, the seconds per trajectory (wall per step of a rank's batch, and per chain:
core-seconds), the CG iterations per solve (cg), τ_int and ESS/s of plaquette and pbp (production wall
time), and ESS/s per core.

Where a run is too long for a short bench (dense at 6^4 and 8^4 costs seconds per force and ~9 forces per
trajectory) the job is a few trajectories of one chain per rank at the md_steps the cg run of the same size
chose: its time per trajectory is measured, and τ_int (in trajectories: the same Markov chain but for the
pseudofermion's noise in the test) is taken from that cg run, as the table says.
ESS/s per core = 1 / (2 τ_int · s per chain-trajectory). The cold start's first trajectories are not accepted,
so a timing run's acceptance is not shown.

    .venv/bin/python tools/bench_gauge.py                          # 4^4, 6^4, 8^4 (about 35 min on 2 cores)
    .venv/bin/python tools/bench_gauge.py --sizes 4 --json out.json
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

from slmc_hpc.analysis import analyze_run

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import run_job as run_scale_job  # noqa: E402  (the sibling tool)

#: Per (size, evaluator): chains per rank, thermalisation and measurements of a full run; None: timing only.
#: pbp thermalises slowly from the cold start (at 4^4 it drifts for ~100 trajectories): 200 trajectories first.
PLANS = {
    (4, "cg"): (4, 200, 600),
    (4, "dense"): (4, 200, 600),
    (6, "cg"): (2, 150, 300),
    (6, "dense"): None,
    (8, "cg"): (1, 80, 120),
    (8, "dense"): None,
}
TIMING_TRAJECTORIES = 3


def job(size: int, evaluator: str, chains: int, thermalization: int, measurements: int, md_steps, seed: int) -> dict:
    return {
        "model": {"kind": "su2_staggered", "shape": [size] * 4, "beta": 2.7, "mass": 0.3, "n_flavors": 4},
        "evaluator": {"kind": evaluator},
        "sampler": {
            "kind": "hmc",
            "chains_per_rank": chains,
            "md_steps": md_steps,
            "thermalization": thermalization,
            "measurements": measurements,
        },
        "seed": seed,
    }


def run_job(settings: dict, run_dir: Path, ranks: int) -> float:
    """bench_scale's runner, with the log beside the run directory."""
    return run_scale_job(settings, run_dir, ranks, log=run_dir.parent / f"{run_dir.name}.log")


def summarize(run_dir: Path, ranks: int, analyse: bool) -> dict:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        attrs = f.attrs
        n_chains, steps = f["samples"]["acceptance"].shape
        row = {
            "md_steps": int(attrs["md_steps"]),
            "step_size": float(attrs["step_size"]),
            "chains": int(n_chains),
            "trajectories": int(steps),
            "acceptance": float(np.mean(f["samples"]["acceptance"][()])),
            "production_s": float(attrs["seconds_production"]),
            "tune_s": float(attrs.get("seconds_tune", 0.0)),
            "thermalize_s": float(attrs.get("seconds_thermalize", 0.0)),
        }
        if "cg_iterations" in f["samples"]:
            row["cg_iterations"] = float(np.mean(f["samples"]["cg_iterations"][()]))
    row["s_per_step"] = row["production_s"] / steps  # wall seconds of one trajectory of a rank's batch
    row["s_per_chain_trajectory"] = row["s_per_step"] * ranks / n_chains  # core-seconds per chain
    if analyse:
        with contextlib.redirect_stdout(io.StringIO()):
            results = analyze_run(run_dir)
        for name in ("plaquette", "pbp"):
            stats = results[name]
            row[f"tau_{name}"] = stats["tau_int"]
            row[f"ess_{name}"] = stats["ess"]
            row[f"ess_per_s_{name}"] = stats["ess"] / row["production_s"]
        row["exp_minus_dH"] = results["exp_minus_dH"]["mean"]
        row["tau_source"] = "measured"
    return row


def per_core(row: dict, name: str) -> float:
    return 1.0 / (2.0 * row[f"tau_{name}"] * row["s_per_chain_trajectory"])


def table(rows: list[dict]) -> str:
    lines = [
        "| lattice | evaluator | md_steps (step) | acceptance | s per trajectory (rank's batch) "
        "| s per chain-trajectory (core) | CG iterations per solve | τ_int plaquette | τ_int pbp "
        "| ESS/s plaquette | ESS/s pbp | ESS/s per core: plaquette, pbp | τ from |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cg = f"{r['cg_iterations']:.0f}" if "cg_iterations" in r else "-"
        acceptance = f"{r['acceptance']:.3f}" if r["tau_source"] == "measured" else "-"
        ess = f"{r['ess_per_s_plaquette']:.3g} | {r['ess_per_s_pbp']:.3g}" if "ess_per_s_plaquette" in r else "- | -"
        lines.append(
            f"| {r['size']}^4 | {r['evaluator']} | {r['md_steps']} ({r['step_size']:.3g}) | {acceptance} | "
            f"{r['s_per_step']:.3g} | {r['s_per_chain_trajectory']:.3g} | {cg} | {r['tau_plaquette']:.2f} | "
            f"{r['tau_pbp']:.2f} | {ess} | {per_core(r, 'plaquette'):.3g}, {per_core(r, 'pbp'):.3g} | "
            f"{r['tau_source']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--evaluators", nargs="+", default=["cg", "dense"])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_gauge_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# runs in {workdir}; {args.ranks} ranks, 1 thread each", flush=True)
    rows, full = [], {}
    for evaluator in args.evaluators:
        for size in sorted(args.sizes):
            plan = PLANS.get((size, evaluator))
            run_dir = workdir / f"L{size}_{evaluator}"
            if plan is None:  # timing only, at the step count and with the τ_int of a full run of this size
                source = full.get(size)
                if source is None:
                    raise SystemExit(f"{size}^4 {evaluator}: a full run of this size must come first (--evaluators)")
                settings = job(size, evaluator, 1, 0, TIMING_TRAJECTORIES, source["md_steps"], args.seed)
                wall = run_job(settings, run_dir, args.ranks)
                row = summarize(run_dir, args.ranks, analyse=False)
                row.update({k: source[k] for k in ("tau_plaquette", "tau_pbp")})
                row["tau_source"] = f"{source['evaluator']} at {size}^4 (and its md_steps; timing from the cold start)"
            else:
                chains, thermalization, measurements = plan
                settings = job(size, evaluator, chains, thermalization, measurements, "auto", args.seed)
                wall = run_job(settings, run_dir, args.ranks)
                row = summarize(run_dir, args.ranks, analyse=True)
            row.update(size=size, evaluator=evaluator, wall=wall)
            if plan is not None:
                full[size] = row
            rows.append(row)
            print(table([row]).splitlines()[-1], f"(wall {wall:.0f} s)", flush=True)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
