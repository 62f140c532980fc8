"""`slmc-hpc`: the command line (run, status, analyze, plot, config).

Bad input (InputError, ConfigError) is reported once, by rank 0, as `slmc-hpc: error: ...` with exit
status 2 and nothing written: validation happens before the driver creates `output.dir`. Anything
else is a crash: every rank prints its traceback, and under MPI the job is aborted so that no rank
waits forever in a collective. MPI is never initialised just to report bad input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from slmc_hpc import __version__
from slmc_hpc.config import Config, default_config, load_config, parse_overrides, to_yaml, with_overrides
from slmc_hpc.errors import ConfigError, InputError

PROG = "slmc-hpc"
# Under MPI, ranks other than 0 wait this long before aborting on bad input, so that rank 0's message
# comes first (it aborts the job, and them); if rank 0 is stuck elsewhere, they report it themselves.
ABORT_GRACE_S = 3.0
# Set by mpirun (OpenMPI), Hydra/PMI-2 (MPICH, srun --mpi=pmi2) and PMIx (srun --mpi=pmix) in every
# process before MPI_Init, so the rank is known without starting MPI.
LAUNCHER_RANK_ENV = ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
# The job's size, where the launcher exports it (OpenMPI; Hydra/PMI-2).
LAUNCHER_SIZE_ENV = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def _mpi_already_initialised() -> bool:
    return "mpi4py.MPI" in sys.modules


def _launcher_rank() -> int | None:
    """This process's rank from the launcher's environment, or None when not started by mpirun/srun."""
    for var in LAUNCHER_RANK_ENV:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return None


def _rank_size(initialise: bool) -> tuple[int, int]:
    """(rank, size) of this process. Starts MPI only if asked and the process runs under a launcher;
    without MPI running, the size is unknown and reported as 1."""
    if _mpi_already_initialised() or (initialise and _launcher_rank() is not None):
        from slmc_hpc.parallel import world

        comm = world()
        return comm.Get_rank(), comm.Get_size()
    rank = _launcher_rank()
    return (0 if rank is None else rank), 1


def _job_size() -> int:
    """Ranks in this job: from the launcher's environment if it says (MPI not started), else from MPI."""
    for var in LAUNCHER_SIZE_ENV:
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return _rank_size(initialise=True)[1]


def _config(args: argparse.Namespace) -> Config:
    """The job's configuration (the scan point `--point`, or the first point of a scan); errors are collective:
    every rank reads the same file and refuses it alike."""
    try:
        points = _points(args)
        if points:
            return points[args.point if args.point is not None else 0].config
        if args.point is not None:
            raise ConfigError(f"--point {args.point}: {args.config} is not a scan (no key has a list of values)")
        config = default_config() if args.config is None else load_config(args.config)
        return with_overrides(config, parse_overrides(args.set)) if args.set else config
    except InputError as exc:
        exc.collective = True
        raise


def _points(args: argparse.Namespace) -> list:
    """The points of a scan job (with --set applied to each), [] for a single job."""
    if args.config is None:
        return []
    from slmc_hpc.scan import load_scan

    points = load_scan(args.config)
    if points and args.set:
        from dataclasses import replace

        overrides = parse_overrides(args.set)
        points = [replace(p, config=with_overrides(p.config, overrides)) for p in points]
    if points and args.point is not None and not 0 <= args.point < len(points):
        raise ConfigError(f"--point {args.point}: the scan {args.config} has points 0 to {len(points) - 1}")
    return points


def cmd_run(args: argparse.Namespace) -> int:
    points = None
    try:
        points = _points(args)
    except InputError as exc:
        exc.collective = True
        raise
    config = None if points else _config(args)  # validated before anything touches the disk or MPI
    from slmc_hpc.io.runfile import require_parallel_hdf5

    require_parallel_hdf5(_job_size())  # several ranks but a serial h5py: refused before anything runs
    if points:
        from slmc_hpc.scan import run_scan, write_index

        if _launcher_rank() in (None, 0):
            write_index(_scan_root(points), points)
        return run_scan(points, force=args.force, fresh=args.fresh, only=args.point)
    from slmc_hpc.driver import run_simulation

    run_simulation(config, force=args.force, fresh=args.fresh)
    return 0


def run_target(argv: list[str]) -> Path:
    """The directory `slmc-hpc status` should read for `slmc-hpc run ARGV`: the run's output.dir, or a scan's
    directory (with --point: that point's). For the batch templates."""
    args = build_parser().parse_args(["config", *argv])
    points = _points(args)
    if points and args.point is None:
        return _scan_root(points)
    return Path(_config(args).output.dir)


def _scan_root(points) -> Path:
    return Path(points[0].config.output.dir).parent


def _runs(paths: list[str]) -> list[Path]:
    """The run.h5 of every run behind `paths` (run directories, run.h5 files, scan directories)."""
    from slmc_hpc.results import run_paths

    return run_paths(paths)


def _is_collection(paths: list[str]) -> bool:
    """True for several paths, or a scan directory: more than one run, a merged table and a scan plot."""
    from slmc_hpc.scan import SCAN_FILE

    return len(paths) > 1 or (Path(paths[0]) / SCAN_FILE).is_file()


def cmd_status(args: argparse.Namespace) -> int:
    from slmc_hpc.driver import status_report

    runs = [path.parent for path in _runs(args.runs)]
    print("\n\n".join(status_report(run_dir) for run_dir in runs))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from slmc_hpc.analysis import analyze_run

    options = {"skip": args.skip, "bin_size": args.bin}
    if not _is_collection(args.runs):  # one run: its table, as before
        analyze_run(_runs(args.runs)[0], csv=args.csv, samples_csv=args.samples_csv, **options)
        return 0
    from slmc_hpc.results import merged_rows, write_table

    for path in _runs(args.runs):
        analyze_run(path, csv=args.csv, samples_csv=args.samples_csv, **options)
        print()
    rows = merged_rows(args.runs, **options)
    table = Path(args.table) if args.table else _table_path(args.runs)
    for path in write_table(rows, table):
        print(f"wrote {path} ({len(rows)} runs, one row each)")
    return 0


def _table_path(paths: list[str]) -> Path:
    """The merged table's file: in the scan directory for one scan, else results.csv here."""
    from slmc_hpc.scan import SCAN_FILE

    if len(paths) == 1 and (Path(paths[0]) / SCAN_FILE).is_file():
        return Path(paths[0]) / "results.csv"
    return Path("results.csv")


def cmd_plot(args: argparse.Namespace) -> int:
    from slmc_hpc.plots import plot_run, plot_scan

    runs = _runs(args.runs)
    for path in runs:
        plot_run(path, linear=args.linear_sq)  # prints the files it wrote
    if _is_collection(args.runs) and len(runs) > 1:
        from slmc_hpc.scan import SCAN_FILE

        root = Path(args.runs[0]) if (Path(args.runs[0]) / SCAN_FILE).is_file() else Path(".")
        print(f"wrote {plot_scan([p.parent for p in runs], root / 'scan.png')}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    points = _points(args)
    if points and args.point is None:
        sys.stdout.write(f"# a scan of {len(points)} points (--point K prints point K; this is point 0):\n")
        for k, point in enumerate(points):
            sys.stdout.write(f"#   {k}: {point.name}  {point.values}\n")
    sys.stdout.write(to_yaml(_config(args)))
    return 0


def _add_set_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one key of CONFIG (YAML value), e.g. --set model.T=0.1 --set output.dir=runs/T0.1",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Self-learning Monte Carlo for lattice models with fermions (model.kind: double_exchange, "
        "su2_staggered), with MPI.",
        epilog="Under MPI: mpirun -n 4 python -m mpi4py -m slmc_hpc run job.yaml",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run (or resume) a simulation; writes output.dir/run.h5",
        description="Run the job CONFIG, or resume it from output.dir/checkpoint.h5 (the same command after any "
        "interruption). A job whose keys have lists of values is a scan: every point runs in its own directory "
        "under output.dir, the job's ranks split into groups.",
    )
    run.add_argument("config", nargs="?", metavar="CONFIG", help="YAML job file (default: the embedded defaults)")
    run.add_argument(
        "--force", action="store_true", help="resume even if the configuration changed (never deletes anything)"
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="delete the run in output.dir (run.h5, checkpoint.h5, results, plots) and start afresh",
    )
    run.add_argument("--point", type=int, metavar="K", help="a scan: run point K only (a job array's task)")
    _add_set_option(run)
    run.set_defaults(handler=cmd_run)

    runs_help = "run directories (output.dir), run.h5 files, or scan directories"
    status = sub.add_parser(
        "status",
        help="progress of runs, finished or still going",
        description="Live or dead (since when), host and pid, phase, measurements, rate and time left, the last "
        "checkpoint, of every run given (a scan directory: every point).",
    )
    status.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    status.set_defaults(handler=cmd_status)

    analyze = sub.add_parser(
        "analyze",
        help="means, errors and autocorrelation times -> results.json per run (and a merged table for several)",
        description="Print each run's results table and write results.json (and /results in run.h5) next to its "
        "run.h5. For several runs or a scan: also one table of all runs, one row each (CSV, and Parquet where "
        "pyarrow is installed).",
    )
    analyze.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    analyze.add_argument(
        "--csv",
        action="store_true",
        help="also write each run's table as results.csv (one row per observable: mean, error, tau_int, "
        "tau_int_error, ess, r_hat, ...) and its field observables' files (spins: structure_factor.csv, "
        "correlation.csv) next to run.h5",
    )
    analyze.add_argument(
        "--samples-csv",
        action="store_true",
        help="also write every raw sample as samples.csv (chain, measurement, observable, value) next to run.h5",
    )
    analyze.add_argument("--skip", type=int, default=0, metavar="N", help="leave out the first N measurements")
    analyze.add_argument(
        "--bin", type=int, default=1, metavar="B", help="average consecutive blocks of B measurements first"
    )
    analyze.add_argument(
        "--table", metavar="FILE", help="the merged table's file (default: SCAN_DIR/results.csv, or ./results.csv)"
    )
    analyze.set_defaults(handler=cmd_analyze)

    plot = sub.add_parser(
        "plot",
        help="time series, autocorrelation, S(q), ΔH and training figures -> RUN_DIR/plots/*.png",
        description="Write PNG figures into plots/ next to each run.h5 and print their paths; for several runs or a "
        "scan also scan.png: the results against the scanned parameter, one curve per group of the others.",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN", help=runs_help)
    plot.add_argument(
        "--linear-sq",
        action="store_true",
        help="S(q) on a linear colour scale as structure_factor_linear.png (default: log, structure_factor.png)",
    )
    plot.set_defaults(handler=cmd_plot)

    config = sub.add_parser(
        "config",
        help="print the resolved configuration (defaults included) as YAML",
        description="Print the resolved configuration of CONFIG (or of the embedded defaults) as commented YAML: a "
        "good starting job file. `--set model.kind=su2_staggered` prints the gauge theory's keys.",
    )
    config.add_argument("config", nargs="?", metavar="CONFIG", help="YAML job file (default: the embedded defaults)")
    config.add_argument("--point", type=int, metavar="K", help="a scan: point K's configuration")
    _add_set_option(config)
    config.set_defaults(handler=cmd_config)
    return parser


def _report_input_error(exc: InputError) -> int:
    """One message from rank 0, exit status 2. MPI is not initialised for this.

    Config errors are found before MPI starts, on every rank alike. If MPI is already running (bad
    input found later, e.g. by the driver), some ranks may be waiting in a collective: abort the job,
    unless every rank raised the error together (`exc.collective`).
    """
    rank, size = _rank_size(initialise=False)
    if _mpi_already_initialised() and size > 1 and not exc.collective:
        if rank != 0:
            time.sleep(ABORT_GRACE_S)
        sys.stderr.write(f"{PROG}: error{f' (rank {rank})' if rank else ''}: {exc}\n")
        sys.stderr.flush()
        from slmc_hpc.parallel import world

        world().Abort(2)
    if rank == 0:
        sys.stderr.write(f"{PROG}: error: {exc}\n")
    return 2


def _report_crash() -> int:
    """Print the traceback with the rank; under MPI abort the whole job so that no rank hangs."""
    rank, size = _rank_size(initialise=True)
    sys.stderr.write(f"{PROG}: rank {rank}: unexpected error\n{traceback.format_exc()}")
    sys.stderr.flush()
    if size > 1:
        from slmc_hpc.parallel import world

        world().Abort(1)
    return 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except InputError as exc:
        return _report_input_error(exc)
    except BrokenPipeError:
        # `slmc-hpc config | head`: the reader is gone, which is what the user asked for; no message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception:
        return _report_crash()
