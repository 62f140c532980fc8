"""Benchmark the exact-weight evaluators; prints markdown tables (part of `make bench`).

1. `dense` (assembly of h(S) + batched eigvalsh + Ω) against raw `numpy.linalg.eigvalsh` on the same,
   already built, stacked matrices: what the evaluator adds over the eigensolver itself.
2. `slepc` on 2 MPI ranks (this script starts `mpirun -n 2` on itself) against `dense` on 1 rank,
   for each SLEPc solver choice, in seconds per configuration.

Thread counts are set before numpy is imported (one BLAS thread per process by default), and printed.
Usage: .venv/bin/python tools/bench_evaluators.py [--threads 1] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
WORKER_TAG = "BENCH_SLEPC_RESULT "
#: SLEPc solver choices compared in part 2: (label, evaluator options, largest L worth the wait).
SLEPC_VARIANTS = [
    ("krylovschur, ds_method 1 (default)", {"eps_type": "krylovschur", "ds_method": 1}, None),
    ("krylovschur, ds_method 2", {"eps_type": "krylovschur", "ds_method": 2}, None),
    ("krylovschur, ds_method 0 (SLEPc's default DS)", {"eps_type": "krylovschur", "ds_method": 0}, 16),
    ("lapack", {"eps_type": "lapack"}, None),
    ("scalapack", {"eps_type": "scalapack"}, None),
]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads per process (default 1)")
    parser.add_argument("--batch", type=int, default=8, help="configurations per batch in part 1")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and sizes (a smoke run)")
    parser.add_argument("--slepc-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--configs", type=int, default=3, help=argparse.SUPPRESS)
    return parser.parse_args()


def set_threads(threads: int) -> dict[str, str]:
    """Pin the thread counts (must run before numpy loads OpenBLAS)."""
    for name in THREAD_VARIABLES:
        os.environ[name] = str(threads)
    return {name: os.environ[name] for name in THREAD_VARIABLES}


def make_model(lx: int):
    from slmc_hpc.systems.double_exchange.physics import DoubleExchange

    return DoubleExchange(lx, lx, {1: 1.0}, J=2.0, mu=0.0, T=0.05)


def make_spins(model, count: int, seed: int = 2024):
    import numpy as np

    from slmc_hpc.systems.double_exchange.physics import random_spins

    return random_spins(np.random.default_rng(seed), (count, model.n_sites))


def load_average() -> str:
    """The 1-minute load average: other jobs on the machine show up as noise in the timings."""
    return f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])


def bench_dense_overhead(sizes: list[int], batch: int, budget_s: float) -> list[str]:
    """Part 1: interleaved repetitions of dense.omega(spins) and raw eigvalsh(h), after a warm-up."""
    import numpy as np

    from slmc_hpc.systems.double_exchange.evaluators import make_evaluator

    rows = [
        "| L | 2N | batch | raw eigvalsh (ms/config) | dense evaluator (ms/config) | overhead | repetitions |",
        "|---|---|---|---|---|---|---|",
    ]
    for lx in sizes:
        model = make_model(lx)
        spins = make_spins(model, batch)
        evaluator = make_evaluator("dense", model)
        matrices = model.hamiltonian(spins)
        np.linalg.eigvalsh(matrices)  # warm-up: first-touch page faults and BLAS buffers
        evaluator.omega(spins)
        raw, full = [], []
        start = time.perf_counter()
        while len(raw) < 5 or (time.perf_counter() - start < budget_s and len(raw) < 200):
            t0 = time.perf_counter()
            np.linalg.eigvalsh(matrices)
            t1 = time.perf_counter()
            evaluator.omega(spins)
            t2 = time.perf_counter()
            raw.append((t1 - t0) / batch)
            full.append((t2 - t1) / batch)
        t_raw, t_full = median(raw), median(full)
        rows.append(
            f"| {lx} | {model.n_orbitals} | {batch} | {1e3 * t_raw:.3f} | {1e3 * t_full:.3f} "
            f"| {100 * (t_full / t_raw - 1):+.1f}% | {len(raw)} |"
        )
    return rows


def bench_dense_seconds(lx: int, configs: int) -> tuple[float, float]:
    """(median, best) seconds per configuration of the dense evaluator on this 1-rank process."""
    from slmc_hpc.systems.double_exchange.evaluators import make_evaluator

    model = make_model(lx)
    spins = make_spins(model, configs)
    evaluator = make_evaluator("dense", model)
    evaluator.omega(spins[:1])
    times = []
    for spin in spins:
        t0 = time.perf_counter()
        evaluator.omega(spin[None])
        times.append(time.perf_counter() - t0)
    return median(times), min(times)


def slepc_worker(sizes: list[int], configs: int) -> None:
    """Runs under mpirun: time every SLEPc variant on the world communicator; rank 0 prints JSON lines."""
    import numpy as np

    from slmc_hpc.parallel import world
    from slmc_hpc.systems.double_exchange.evaluators import make_evaluator

    comm = world()
    for lx in sizes:
        model = make_model(lx)
        spins = make_spins(model, configs)
        _, expected = make_evaluator("dense", model).omega(spins[:1])
        for label, options, max_lx in SLEPC_VARIANTS:
            if max_lx is not None and lx > max_lx:
                continue
            evaluator = make_evaluator("slepc", model, comm=comm, **options)
            _, eigenvalues = evaluator.omega(spins[:1])  # warm-up (solver set-up) and a correctness check
            error = float(np.max(np.abs(eigenvalues - expected)) / np.max(np.abs(expected)))
            times = []
            for spin in spins:
                comm.Barrier()
                t0 = time.perf_counter()
                evaluator.omega(spin[None])
                times.append(time.perf_counter() - t0)
            evaluator.close()
            times = np.max(comm.allgather(times), axis=0)  # the slowest rank sets the pace
            if comm.Get_rank() == 0:
                result = {"L": lx, "variant": label, "median": median(list(times)), "best": float(times.min())}
                result.update(error=error, ranks=comm.Get_size())
                print(WORKER_TAG + json.dumps(result), flush=True)


def run_slepc_workers(sizes: list[int], configs: int, ranks: int = 2) -> list[dict]:
    """Start `mpirun -n ranks` on this script in worker mode, one thread per rank; collect its results."""
    from slmc_hpc.parallel import launcher_env  # not at the top: thread variables must be set before numpy loads

    env = {**launcher_env(threads=1), **{name: "1" for name in THREAD_VARIABLES}}
    command = ["mpirun", "-n", str(ranks), sys.executable, "-m", "mpi4py", os.path.abspath(__file__), "--slepc-worker"]
    command += ["--configs", str(configs), "--sizes", *map(str, sizes)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return [json.loads(line[len(WORKER_TAG) :]) for line in proc.stdout.splitlines() if line.startswith(WORKER_TAG)]


def bench_slepc(sizes: list[int], configs: int) -> list[str]:
    """Part 2: SLEPc on 2 ranks next to dense on 1 rank, seconds per configuration."""
    results = run_slepc_workers(sizes, configs)
    dense = {lx: bench_dense_seconds(lx, configs) for lx in sizes}
    rows = [
        "| L | 2N | evaluator | ranks | s/config median (best) | median vs dense | max abs eig. error / max abs E |",
        "|---|---|---|---|---|---|---|",
    ]
    for lx in sizes:
        t_dense, best_dense = dense[lx]
        rows.append(
            f"| {lx} | {2 * lx * lx} | dense (numpy eigvalsh) | 1 | {t_dense:.3f} ({best_dense:.3f}) | 1.00x | - |"
        )
        for r in (r for r in results if r["L"] == lx):
            rows.append(
                f"| {lx} | {2 * lx * lx} | slepc: {r['variant']} | {r['ranks']} | {r['median']:.3f} ({r['best']:.3f}) "
                f"| {r['median'] / t_dense:.2f}x | {r['error']:.1e} |"
            )
    return rows


def main() -> None:
    args = parse_args()
    threads = set_threads(1 if args.slepc_worker else args.threads)
    if args.slepc_worker:
        slepc_worker(args.sizes, args.configs)
        return

    import numpy as np

    print("# Evaluator benchmark\n")
    print(
        f"- host: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"
    )
    print(f"- threads: {', '.join(f'{k}={v}' for k, v in threads.items())} (part 2 ranks: 1 thread each)")
    print("- model: LxL, hoppings {1: 1.0}, J = 2, mu = 0, T = 0.05; random spin configurations")
    print(f"- started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {load_average()}\n", flush=True)

    sizes = [6, 12] if args.quick else [6, 12, 16]
    print(f"## dense evaluator vs raw eigvalsh (batch {args.batch}, interleaved, medians)\n")
    print("\n".join(bench_dense_overhead(sizes, args.batch, budget_s=1.0 if args.quick else 8.0)) + "\n", flush=True)

    slepc_sizes = [12] if args.quick else [16, 24]
    print("## slepc on 2 MPI ranks vs dense on 1 rank (seconds per configuration)\n")
    print("\n".join(bench_slepc(slepc_sizes, configs=2 if args.quick else 4)), flush=True)
    print(f"\n- finished {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, {load_average()}", flush=True)


if __name__ == "__main__":
    main()
