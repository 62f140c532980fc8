"""`python -m slmc_hpc ...` is the same as the `slmc-hpc` console script."""

from slmc_hpc.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
