"""Errors that the command line reports as one line, without a traceback."""


class SmoothnessError(Exception):
    """Base class for user-facing errors (bad input, bad configuration, missing data)."""


def first_line(e: BaseException, most: int | None = None) -> str:
    """The first line of an exception's message (at most `most` characters), for a one-line error."""
    lines = str(e).strip().splitlines()
    return lines[0][:most] if lines else type(e).__name__


class DataError(SmoothnessError):
    """A data set is missing, corrupt, or cannot provide what was asked for."""


class ConfigError(SmoothnessError):
    """An invalid option or configuration value."""


class StoreError(DataError):
    """A results store is missing, damaged, unreadable, or cannot be written where asked."""


class MeasureError(SmoothnessError, ValueError):
    """A measure cannot be computed from the model or the data given (their shapes, types or values: non-finite
    points, labels outside the model's outputs, a model output that is not one row per point, work beyond the
    memory there is). Also a ValueError, which the measures raised for these before."""


class MeasureTypeError(MeasureError, TypeError):
    """A MeasureError about the kind of thing given (a generator where the data is read twice, an array of Python
    objects, a callable that is no nn.Module where the parameters are needed). Also a TypeError."""
