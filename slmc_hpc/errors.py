"""Error types that the CLI turns into a clear message and exit status 2."""


class InputError(Exception):
    """Bad user input: a config, a checkpoint or a run directory. Nothing was written."""

    #: True when every MPI rank raised it together, so the CLI can exit cleanly instead of aborting the job.
    collective = False


class ConfigError(InputError):
    """A configuration value is wrong; the message names the key path, the value and the expectation."""


class TrainingError(RuntimeError):
    """Training produced a non-finite loss, gradient or parameter; the last good parameters were restored."""
