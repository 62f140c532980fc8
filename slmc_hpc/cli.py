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
from slmc_hpc.errors import InputError

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
    config = default_config() if args.config is None else load_config(args.config)
    return with_overrides(config, parse_overrides(args.set)) if args.set else config


def _run_dir(path: str) -> Path:
    run_dir = Path(path)
    if not run_dir.is_dir():
        raise InputError(f"run directory not found: {run_dir}")
    return run_dir


def cmd_run(args: argparse.Namespace) -> int:
    config = _config(args)  # validated before anything touches the disk or MPI
    from slmc_hpc.io.runfile import require_parallel_hdf5

    require_parallel_hdf5(_job_size())  # several ranks but a serial h5py: refused before anything runs
    from slmc_hpc.driver import run_simulation

    run_simulation(config, force=args.force, fresh=args.fresh)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    run_dir = _run_dir(args.run_dir)
    from slmc_hpc.driver import status_report

    print(status_report(run_dir))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from slmc_hpc.analysis import analyze_run

    analyze_run(Path(args.run), csv=args.csv, samples_csv=args.samples_csv)  # prints its table and the files
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from slmc_hpc.plots import plot_run

    plot_run(Path(args.run), linear=args.linear_sq)  # prints the files it wrote
    return 0


def cmd_config(args: argparse.Namespace) -> int:
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

    run = sub.add_parser("run", help="run (or resume) a simulation; writes output.dir/run.h5")
    run.add_argument("config", nargs="?", metavar="CONFIG", help="YAML job file (default: the embedded defaults)")
    run.add_argument(
        "--force", action="store_true", help="resume even if the configuration changed (never deletes anything)"
    )
    run.add_argument(
        "--fresh",
        action="store_true",
        help="delete the run in output.dir (run.h5, checkpoint.h5, results.json) and start afresh",
    )
    _add_set_option(run)
    run.set_defaults(handler=cmd_run)

    status = sub.add_parser("status", help="progress of a run, finished or still going")
    status.add_argument("run_dir", metavar="RUN_DIR")
    status.set_defaults(handler=cmd_status)

    run_help = "a run directory (output.dir of a run) or its run.h5"
    analyze = sub.add_parser(
        "analyze",
        help="means, errors and autocorrelation times -> RUN_DIR/results.json and run.h5:/results",
        description="Print the results table and write results.json (and /results in run.h5) next to run.h5.",
    )
    analyze.add_argument("run", metavar="RUN", help=run_help)
    analyze.add_argument(
        "--csv",
        action="store_true",
        help="also write the results table as results.csv (one row per observable: mean, error, tau_int, "
        "tau_int_error, ess, ...) and <S(q)> per momentum as structure_factor.csv, next to run.h5",
    )
    analyze.add_argument(
        "--samples-csv",
        action="store_true",
        help="also write every raw sample as samples.csv (chain, measurement, observable, value) next to run.h5",
    )
    analyze.set_defaults(handler=cmd_analyze)

    plot = sub.add_parser(
        "plot",
        help="time series, autocorrelation, S(q) and training figures -> RUN_DIR/plots/*.png",
        description="Write PNG figures into plots/ next to run.h5 and print their paths.",
    )
    plot.add_argument("run", metavar="RUN", help=run_help)
    plot.add_argument(
        "--linear-sq",
        action="store_true",
        help="S(q) on a linear colour scale (default: log, which shows the diffuse background next to a Bragg peak)",
    )
    plot.set_defaults(handler=cmd_plot)

    config = sub.add_parser("config", help="print the resolved configuration (defaults included) as YAML")
    config.add_argument("config", nargs="?", metavar="CONFIG", help="YAML job file (default: the embedded defaults)")
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
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except Exception:
        return _report_crash()
