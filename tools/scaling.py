"""Weak and strong scaling of `slmc-hpc run` over MPI rank counts, from the runs' own /timing records.

    .venv/bin/python tools/scaling.py [--ranks 1 2] [--config CONFIG] [--chains-per-rank 2]
                                      [--total-chains 4] [--out runs/scaling] [--set KEY=VALUE ...]

Weak scaling keeps the chains per rank fixed (the work grows with the ranks), strong scaling keeps the
total number of chains fixed (chains per rank = total / ranks). Each point is one real
`mpirun -n P python -m mpi4py -m slmc_hpc run` of a small configuration (default: exact local MC on 6x6,
which has no training phase, so the production phase is the whole cost).

Time of a run = the slowest rank's production time, summed from run.h5:/timing/<phase>
([mpi_size, n_measurements] seconds per rank and measurement window); the I/O share is that rank's
`io` part, the imbalance the gap between the slowest and the mean rank (what collectives wait for).
Efficiency: weak T(1)/T(P); strong T(1)/(P T(P)). The CPU efficiency (CPU seconds of all ranks per
chain, from getrusage) does not see other jobs competing for the cores, so it isolates our own overhead
(MPI start-up, collectives, I/O) on a busy machine. Prints a markdown table, writes scaling.md,
scaling.json and scaling.png (efficiency vs ranks) into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np

from slmc_hpc.parallel import launcher_env

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = """\
model: {lx: 6, ly: 6, hoppings: {1: 1.0}, J: 1.0, mu: 0.0, T: 0.05}
evaluator: {kind: dense, ranks_per_config: 1}
sampler: {kind: exact, chains_per_rank: 2, thermalization: 5, measurements: 300, measure_every: 1}
output: {dir: runs/scaling/default, checkpoint_every: 3600}
seed: 1234
"""


def mpi_env() -> dict[str, str]:
    """One BLAS thread per rank; as root on a small machine OpenMPI needs the allow/oversubscribe flags."""
    env = launcher_env(threads=1)
    # Waiting ranks yield the core instead of spinning, so CPU time counts work, not polling.
    env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    return env


def run_point(config: Path, ranks: int, chains_per_rank: int, run_dir: Path, overrides: list[str]) -> dict:
    """One scaling point: a fresh run, then its timing summary."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    sets = [f"sampler.chains_per_rank={chains_per_rank}", f"output.dir={run_dir}", *overrides]
    cmd = ["mpirun", "-n", str(ranks), sys.executable, "-m", "mpi4py", "-m", "slmc_hpc", "run", str(config)]
    cmd += [arg for s in sets for arg in ("--set", s)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    point = {"ranks": ranks, "chains": ranks * chains_per_rank, "wall": wall, "cpu": cpu}
    return {**point, **timing_summary(run_dir / "run.h5")}


TRAINING_CONFIG = """\
model: {lx: 6, ly: 6, hoppings: {1: 1.0}, J: 1.0, mu: 0.0, T: 0.05}
effective: {kind: transformer, n_J: 3, n_layers: 2, n_att: 6}
training: {warmup_sweeps: 10, rounds: 2, outer_steps_per_round: 20, steps_per_round: 200, batch_size: 64}
sampler: {kind: slmc, chains_per_rank: 2, thermalization: 5, measurements: 10, measure_every: 1}
output: {dir: runs/scaling/training, checkpoint_every: 3600}
seed: 1234
"""


def training_allreduce_share(out: Path, ranks: int) -> dict:
    """Share of the optimizer steps' wall time spent in the gradient allreduce, from a real training run.

    The driver records rank 0's `seconds_training_step` and `seconds_training_allreduce` in run.h5; the
    allreduce time includes waiting for the slowest rank, i.e. everything data parallelism costs.
    """
    config = out / "training.yaml"
    config.write_text(TRAINING_CONFIG)
    point = run_point(config, ranks, 2, out / f"training_{ranks}", [])
    with h5py.File(out / f"training_{ranks}" / "run.h5", "r", locking=False) as f:
        step, allreduce = float(f.attrs["seconds_training_step"]), float(f.attrs["seconds_training_allreduce"])
        steps = len(f["training"]["loss"])
        n_gradient = sum(f["model"][name].size for name in f["model"] if isinstance(f["model"][name], h5py.Dataset))
    latency = allreduce_latency(ranks, n_gradient + 2)  # the Trainer reduces [loss sum, count, gradient]
    return {
        "communication_seconds": latency,
        "ranks": ranks,
        "steps": steps,
        "step_seconds": step,
        "allreduce_seconds": allreduce,
        "share": allreduce / step,
        "wall": point["wall"],
    }


ALLREDUCE_PROBE = """
import time, numpy as np
from mpi4py import MPI
comm, x = MPI.COMM_WORLD, np.random.default_rng(0).random({size})
y, times = np.empty_like(x), []
for _ in range(2000):
    comm.Barrier()
    start = time.perf_counter()
    comm.Allreduce(x, y, op=MPI.SUM)
    times.append(time.perf_counter() - start)
if comm.rank == 0:
    print(np.median(times))
"""


def allreduce_latency(ranks: int, size: int) -> float:
    """Median seconds of one Allreduce of `size` doubles right after a barrier: communication without waiting."""
    code = ALLREDUCE_PROBE.format(size=size)
    cmd = ["mpirun", "-n", str(ranks), sys.executable, "-c", code]
    proc = subprocess.run(cmd, env=mpi_env(), capture_output=True, text=True, check=True)
    return float(proc.stdout.split()[-1])


def timing_summary(path: Path) -> dict:
    """Slowest rank's production time and its parts, from /timing/<phase> [mpi_size, n_measurements]."""
    with h5py.File(path, "r", locking=False) as f:
        n = int(f["samples"].attrs["n_measurements"])
        parts = {name: np.asarray(data[:, :n]).sum(axis=1) for name, data in f["timing"].items()}
    per_rank = sum(parts.values())
    slowest = int(np.argmax(per_rank))
    time_ = float(per_rank[slowest])
    return {
        "time": time_,
        "io_share": float(parts.get("io", np.zeros_like(per_rank))[slowest] / time_),
        "imbalance": float((per_rank.max() - per_rank.mean()) / time_),
        "parts": {name: float(values[slowest]) for name, values in parts.items()},
    }


def add_efficiency(points: list[dict], mode: str) -> None:
    base = points[0]
    for p in points:
        scale = 1.0 if mode == "weak" else p["ranks"] / base["ranks"]
        p["efficiency"] = base["time"] / (scale * p["time"])
        p["wall_efficiency"] = base["wall"] / (scale * p["wall"])
        # CPU seconds per unit of work: blind to other jobs competing for the cores, not to our overheads.
        work = p["chains"] / base["chains"]
        p["cpu_efficiency"] = (base["cpu"] * work) / p["cpu"]


def markdown(series: dict[str, list[dict]]) -> str:
    lines = [
        "| scaling | ranks | chains | production time (s) | efficiency | I/O share | imbalance | wall (s) "
        "| CPU efficiency |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for mode, points in series.items():
        for p in points:
            lines.append(
                f"| {mode} | {p['ranks']} | {p['chains']} | {p['time']:.2f} | {100 * p['efficiency']:.0f}% "
                f"| {100 * p['io_share']:.1f}% | {100 * p['imbalance']:.1f}% | {p['wall']:.1f} "
                f"| {100 * p['cpu_efficiency']:.0f}% |"
            )
    return "\n".join(lines)


def plot(series: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for mode, points in series.items():
        ranks = [p["ranks"] for p in points]
        ax.plot(ranks, [p["efficiency"] for p in points], "o-", label=f"{mode} scaling")
    ax.axhline(0.9, color="grey", ls="--", lw=0.8, label="90%")
    ax.set(xlabel="MPI ranks", ylabel="parallel efficiency", ylim=(0, 1.15), title="slmc-hpc scaling")
    ax.set_xticks(sorted({p["ranks"] for points in series.values() for p in points}))
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--config", type=Path, help="base YAML (default: exact local MC on 6x6)")
    parser.add_argument("--chains-per-rank", type=int, default=2, help="weak scaling: chains per rank")
    parser.add_argument("--total-chains", type=int, help="strong scaling: total chains (default: max ranks)")
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="extra config override")
    parser.add_argument("--modes", nargs="+", default=["weak", "strong"], choices=["weak", "strong"])
    parser.add_argument("--repeat", type=int, default=1, help="runs per point; the fastest counts (less noise)")
    parser.add_argument("--no-training", action="store_true", help="skip the allreduce share of a training step")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = args.config.resolve() if args.config else out / "base.yaml"
    if not args.config:
        config.write_text(DEFAULT_CONFIG)
    total = args.total_chains or max(args.ranks)
    if "strong" in args.modes and any(total % p for p in args.ranks):
        parser.error(f"--total-chains {total} is not divisible by every rank count {args.ranks}")

    series: dict[str, list[dict]] = {}
    for mode in args.modes:
        # Repeats go round the rank counts (1 2 1 2 ...), so a burst of load elsewhere does not hit one point only.
        runs: dict[int, list[dict]] = {ranks: [] for ranks in args.ranks}
        for repeat in range(args.repeat):
            for ranks in args.ranks:
                per_rank = args.chains_per_rank if mode == "weak" else total // ranks
                print(f"{mode}: {ranks} ranks x {per_rank} chains (run {repeat + 1}/{args.repeat}) ...", flush=True)
                runs[ranks].append(run_point(config, ranks, per_rank, out / f"{mode}_{ranks}", args.set))
        points = [min(runs[ranks], key=lambda p: p["time"]) for ranks in args.ranks]
        add_efficiency(points, mode)
        series[mode] = points
    training = None
    if not args.no_training:
        print(f"training: {max(args.ranks)} ranks, 2-layer transformer on 6x6 ...", flush=True)
        training = training_allreduce_share(out, max(args.ranks))
    load = os.getloadavg()
    training_line = (
        ""
        if training is None
        else f"\n\nTraining on {training['ranks']} ranks ({training['steps']} AdamW steps, 2-layer transformer, 6x6): "
        f"the gradient allreduce takes {100 * training['share']:.2f}% of an optimizer step "
        f"({1e3 * training['allreduce_seconds'] / training['steps']:.3f} ms of "
        f"{1e3 * training['step_seconds'] / training['steps']:.2f} ms), waiting for the slowest rank included; "
        f"the communication alone (an allreduce of the gradient right after a barrier) takes "
        f"{1e6 * training['communication_seconds']:.1f} µs, "
        f"{100 * training['communication_seconds'] * training['steps'] / training['step_seconds']:.2f}% of a step."
    )
    table = (
        markdown(series)
        + training_line
        + f"\n\n{os.cpu_count()} cores; load average (1/5/15 min) after the runs: "
        + " ".join(f"{x:.1f}" for x in load)
    )
    print(table)
    (out / "scaling.md").write_text(table + "\n")
    (out / "scaling.json").write_text(json.dumps({**series, "training": training}, indent=2) + "\n")
    plot(series, out / "scaling.png")
    print(f"wrote {out / 'scaling.md'}, {out / 'scaling.json'}, {out / 'scaling.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
