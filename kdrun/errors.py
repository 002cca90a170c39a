"""User-facing errors: the CLI prints their message as one line and exits, no traceback."""


class KdrunError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(KdrunError):
    """An impossible or unknown configuration value."""


class DataNotFoundError(KdrunError):
    """A data set is not where the config says."""

