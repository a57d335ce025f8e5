"""Errors that the command line reports as one line, without a traceback."""


class SmoothnessError(Exception):
    """Base class for user-facing errors (bad input, bad configuration, missing data)."""


class DataError(SmoothnessError):
    """A data set is missing, corrupt, or cannot provide what was asked for."""


class ConfigError(SmoothnessError):
    """An invalid option or configuration value."""


class StoreError(DataError):
    """A results store is missing, damaged, unreadable, or cannot be written where asked."""
