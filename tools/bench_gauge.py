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

With `--slhmc` it also runs the self-learning HMC of each evaluator beside it and reports the wall time to
ESS(pbp) = 1000 with everything before production counted (training, tuning, thermalisation; for a timing-only
exact row, its trajectories at the measured time each). The self-learning recipe is size transfer:

- `dense`: `loops` with every loop class (`effective.loops: auto`: plaquette, rectangle, chair and the Polyakov
  lines in t, x, y, z; its MD needs no fermion at all: one Cholesky per trajectory, for the test), least squares
  on the exact log det of the training trajectories' configurations.
- `cg`: `stout` with no layers at m_eff = 0.4 (its MD solves at the heavier mass): the read-out alone,
  c_g S_g + c_f phi^dag M_ee[m_eff]^-1 phi + the hopping terms, fitted by least squares on the pseudofermion action
  S_g + phi^dag M^-1 phi at both ends of each training trajectory, under that trajectory's phi, which is the form its
  MD integrates and its test compares with. (In tools/slhmc_table.py stout layers add nothing to its acceptance at
  4^4 and double the time per trajectory.)

Both are trained once at 4^4 (exact-HMC warm-up, then SLHMC rounds) and loaded frozen at every size
(`effective.load`); the training's seconds count at every size. Not fine-tuned at the larger size: training starts
from the run's cold start, so a few rounds there would fit links far from equilibrium.

    .venv/bin/python tools/bench_gauge.py                          # 4^4, 6^4, 8^4 (about 35 min on 2 cores)
    .venv/bin/python tools/bench_gauge.py --slhmc --json out.json  # with SLHMC (over an hour)
    .venv/bin/python tools/bench_gauge.py --sizes 4 --json out.json
    .venv/bin/python tools/bench_gauge.py --slhmc --slhmc-evaluators dense   # exact both, SLHMC dense only
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
from bench_scale import TARGET_ESS  # noqa: E402  (the sibling tool)
from bench_scale import run_job as run_scale_job  # noqa: E402

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
#: With --slhmc (a budget of about an hour on 2 cores): shorter full runs, and 2 timing trajectories (dense 8^4
#: takes 105 s each).
SLHMC_PLANS = {4: (4, 100, 300), 6: (2, 60, 120), 8: (1, 30, 40)}
SLHMC_TIMING_TRAJECTORIES = 2

#: The SLHMC of each evaluator (the best of tools/slhmc_table.py at 4^4 for what it costs).
EFFECTIVE = {
    "dense": {"kind": "loops", "loops": "auto"},
    "cg": {"kind": "stout", "n_layers": 0, "loops": ["plaquette", "rectangle"], "mass": 0.4},
}
TRAIN_SIZE = 4
#: Omelyan steps of the training trajectories (md_steps auto's first guess, FIRST_STEP 0.1).
TRAINING_MD_STEPS = 10
#: Training at 4^4 (rounds of SLHMC trajectories per chain, AdamW steps for the stout layer's rhos).
TRAINING = {
    "warmup_sweeps": 30,
    "rounds": 4,
    "outer_steps_per_round": 10,
    "steps_per_round": 40,
    "batch_size": 16,
    "lr": 5.0e-3,
    "validate_every": 5,
    "patience": 4,
}


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


def slhmc_job(
    size: int, evaluator: str, plan: tuple[int, int, int], seed: int, effective: dict, training: dict | None = None
) -> dict:
    """SLHMC with `effective` (its `effective` section: kind, loops, ..., load); training with `training`."""
    settings = job(size, evaluator, *plan, "auto", seed)
    settings["sampler"]["kind"] = "slhmc"
    settings["effective"] = effective
    if training is not None:
        settings["training"] = training
    return settings


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
            "train_s": sum(float(attrs.get(f"seconds_{p}", 0.0)) for p in ("warmup", "train", "freeze")),
        }
        if "cg_iterations" in f["samples"]:
            row["cg_iterations"] = float(np.mean(f["samples"]["cg_iterations"][()]))
    row["s_per_step"] = row["production_s"] / steps  # wall seconds of one trajectory of a rank's batch
    row["s_per_chain_trajectory"] = row["s_per_step"] * ranks / n_chains  # core-seconds per chain
    if analyse:
        with contextlib.redirect_stdout(io.StringIO()):
            results = analyze_run(run_dir)
        for name in ("plaquette", "pbp"):  # (no τ_int from a series too short or never moving: NaN)
            stats = results[name]
            if row["acceptance"] == 0.0:  # the chains never moved: pbp's noise estimates are no samples
                stats = {"tau_int": None, "ess": None}
            row[f"tau_{name}"] = float(stats["tau_int"] if stats["tau_int"] is not None else np.nan)
            row[f"ess_{name}"] = float(stats["ess"] if stats["ess"] is not None else np.nan)
            row[f"ess_per_s_{name}"] = row[f"ess_{name}"] / row["production_s"]
        row["exp_minus_dH"] = results["exp_minus_dH"]["mean"]
        row["tau_source"] = "measured"
    return row


def per_core(row: dict, name: str) -> float:
    return 1.0 / (2.0 * row[f"tau_{name}"] * row["s_per_chain_trajectory"])


def time_to_target(row: dict, ranks: int, before_trajectories: int = 0) -> float:
    """Wall seconds to ESS(pbp) = TARGET_ESS: training (its own and any carried over), tuning and thermalisation,
    then production at the row's rate (a timing-only row: `before_trajectories` at its time per trajectory)."""
    rate = row.get("ess_per_s_pbp", ranks * per_core(row, "pbp"))
    before = row["train_s"] + row.get("transferred_train_s", 0.0) + row["tune_s"] + row["thermalize_s"]
    before += before_trajectories * row["s_per_step"]
    return before + TARGET_ESS / rate


def method(row: dict) -> str:
    return row.get("method", "exact HMC")


def table(rows: list[dict]) -> str:
    lines = [
        "| lattice | evaluator | method | md_steps (step) | acceptance | s per trajectory (rank's batch) "
        "| s per chain-trajectory (core) | CG iterations per solve | τ_int plaquette | τ_int pbp "
        "| ESS/s plaquette | ESS/s pbp | ESS/s per core: plaquette, pbp | τ from |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cg = f"{r['cg_iterations']:.0f}" if "cg_iterations" in r else "-"
        acceptance = f"{r['acceptance']:.3f}" if r["tau_source"] == "measured" else "-"
        ess = f"{r['ess_per_s_plaquette']:.3g} | {r['ess_per_s_pbp']:.3g}" if "ess_per_s_plaquette" in r else "- | -"
        lines.append(
            f"| {r['size']}^4 | {r['evaluator']} | {method(r)} | {r['md_steps']} ({r['step_size']:.3g}) | "
            f"{acceptance} | {r['s_per_step']:.3g} | {r['s_per_chain_trajectory']:.3g} | {cg} | "
            f"{r['tau_plaquette']:.2f} | {r['tau_pbp']:.2f} | {ess} | "
            f"{per_core(r, 'plaquette'):.3g}, {per_core(r, 'pbp'):.3g} | {r['tau_source']} |"
        )
    return "\n".join(lines)


def comparison(rows: list[dict]) -> str:
    """Exact HMC against SLHMC per size and evaluator: minutes to ESS(pbp) = 1000, everything before counted."""
    lines = [
        "| lattice | evaluator | exact HMC: min to ESS(pbp) 1000 | SLHMC | its training (min: own + carried) "
        "| SLHMC: min to ESS(pbp) 1000 | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    exact = {(r["size"], r["evaluator"]): r for r in rows if method(r) == "exact HMC"}
    for r in rows:
        reference = exact.get((r["size"], r["evaluator"]))
        if method(r) == "exact HMC" or reference is None:
            continue
        training = (r["train_s"] / 60, r.get("transferred_train_s", 0.0) / 60)
        if np.isfinite(r["time_to_target"]):
            slhmc = f"{r['time_to_target'] / 60:.1f} | {reference['time_to_target'] / r['time_to_target']:.2f}×"
        else:
            slhmc = "never (nothing accepted) | 0"
        lines.append(
            f"| {r['size']}^4 | {r['evaluator']} | {reference['time_to_target'] / 60:.1f} | {method(r)} | "
            f"{training[0]:.1f} + {training[1]:.1f} | {slhmc} |"
        )
    return "\n".join(lines)


def exact_rows(args, workdir: Path, plans: dict, timing_trajectories: int) -> list[dict]:
    """Exact HMC per evaluator and size: full runs, or timing runs that borrow τ_int from the cg run of the size."""
    rows, full = [], {}
    for evaluator in args.evaluators:
        for size in sorted(args.sizes):
            plan = plans.get((size, evaluator))
            run_dir = workdir / f"L{size}_{evaluator}"
            if plan is None:  # timing only, at the step count and with the τ_int of a full run of this size
                source = full.get(size)
                if source is None:
                    raise SystemExit(f"{size}^4 {evaluator}: a full run of this size must come first (--evaluators)")
                settings = job(size, evaluator, 1, 0, timing_trajectories, source["md_steps"], args.seed)
                wall = run_job(settings, run_dir, args.ranks)
                row = summarize(run_dir, args.ranks, analyse=False)
                row.update({k: source[k] for k in ("tau_plaquette", "tau_pbp")})
                row["tau_source"] = f"{source['evaluator']} at {size}^4 (and its md_steps; timing from the cold start)"
                before = source["tune_trajectories"] + source["thermalization"]
            else:
                chains, thermalization, measurements = plan
                settings = job(size, evaluator, chains, thermalization, measurements, "auto", args.seed)
                wall = run_job(settings, run_dir, args.ranks)
                row = summarize(run_dir, args.ranks, analyse=True)
                row.update(thermalization=thermalization, tune_trajectories=tune_trajectories(run_dir))
                full[size] = row
                before = 0
            row.update(size=size, evaluator=evaluator, wall=wall)
            row["time_to_target"] = time_to_target(row, args.ranks, before)
            rows.append(row)
            print(table([row]).splitlines()[-1], f"(wall {wall:.0f} s)", flush=True)
    return rows


def tune_trajectories(run_dir: Path) -> int:
    with h5py.File(run_dir / "run.h5", "r", locking=False) as f:
        return int(f.attrs.get("tune_trajectories", 0))


def slhmc_rows(args, workdir: Path) -> list[dict]:
    """SLHMC per evaluator: trained at TRAIN_SIZE with that evaluator, carried to every size (module docstring)."""
    rows = []
    for evaluator in args.slhmc_evaluators or args.evaluators:
        effective = EFFECTIVE[evaluator]
        layers = effective.get("n_layers")
        name = effective["kind"] + ("" if layers is None else f" {layers} layer" + ("s" if layers != 1 else ""))
        trained = workdir / f"train_{evaluator}_{effective['kind']}"
        plan = SLHMC_PLANS[TRAIN_SIZE]
        settings = slhmc_job(TRAIN_SIZE, evaluator, (plan[0], 0, 1), args.seed, dict(effective), TRAINING)
        settings["sampler"]["md_steps"] = TRAINING_MD_STEPS  # what `auto` trains with; no tuning for 1 measurement
        run_job(settings, trained, args.ranks)
        trained_s = summarize(trained, args.ranks, analyse=False)["train_s"]
        model = str(trained / "run.h5")
        print(f"# {name}: trained at {TRAIN_SIZE}^4 in {trained_s:.0f} s ({model})", flush=True)
        for size in sorted(args.sizes):
            settings = slhmc_job(size, evaluator, SLHMC_PLANS[size], args.seed, {**effective, "load": model})
            run_dir = workdir / f"L{size}_{evaluator}_slhmc"
            wall = run_job(settings, run_dir, args.ranks)
            row = summarize(run_dir, args.ranks, analyse=True)
            row.update(size=size, evaluator=evaluator, wall=wall, method=f"SLHMC {name}, trained at {TRAIN_SIZE}^4")
            row["transferred_train_s"] = trained_s
            row["time_to_target"] = time_to_target(row, args.ranks)
            rows.append(row)
            print(table([row]).splitlines()[-1], f"(wall {wall:.0f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[4, 6, 8])
    parser.add_argument("--evaluators", nargs="+", default=["cg", "dense"])
    parser.add_argument("--slhmc", action="store_true", help="also SLHMC per evaluator, and minutes to ESS(pbp) 1000")
    parser.add_argument(
        "--slhmc-evaluators",
        nargs="+",
        choices=("cg", "dense"),
        help="SLHMC for these only (default: --evaluators; dense exact rows at 6^4 and 8^4 need the cg exact runs)",
    )
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--workdir", default=None, help="keep the runs here (default: a temporary folder)")
    parser.add_argument("--json", default=None, help="also write the rows as JSON")
    args = parser.parse_args()

    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_gauge_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"# runs in {workdir}; {args.ranks} ranks, 1 thread each", flush=True)
    plans, timing_trajectories = PLANS, TIMING_TRAJECTORIES
    if args.slhmc:  # the same shorter runs for exact HMC where it runs in full
        plans = {key: SLHMC_PLANS[key[0]] if plan is not None else None for key, plan in PLANS.items()}
        timing_trajectories = SLHMC_TIMING_TRAJECTORIES
    rows = exact_rows(args, workdir, plans, timing_trajectories)
    if args.slhmc:
        rows += slhmc_rows(args, workdir)
    print()
    print(table(rows))
    if args.slhmc:
        print()
        print(comparison(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
