"""User-facing errors: the CLI prints their message as one line and exits, no traceback."""


class KdrunError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(KdrunError):
    """An impossible or unknown configuration value."""


class DataNotFoundError(KdrunError):
    """A data set is not where the config says."""


class RunDirectoryTaken(KdrunError):
    """The run directory belongs to another run: nothing is written into it."""


class CheckpointError(KdrunError):
    """A file given or found as a checkpoint cannot be read as one."""


class TrainingDiverged(KdrunError):
    """The training loss became NaN or infinite."""


class Interrupted(KdrunError):
    """The user stopped the run (Ctrl-C); the message says where."""
