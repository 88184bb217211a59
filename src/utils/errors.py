"""Errors that the command line reports as one clear line (no traceback)."""


class HarnessError(Exception):
    """Base class: its message is printed alone, as ``error: <message>``."""


class ConfigError(HarnessError):
    """A config file or command-line override is wrong."""


class DataError(HarnessError):
    """A dataset file is missing or malformed."""


class TrainingError(HarnessError):
    """Training of one grid point failed (for example a NaN loss)."""


class ModelInputError(HarnessError, ValueError):
    """A model refuses the data it was given (a missing modality, a graph with no edges, a matrix
    that does not fit in memory). Models raise it instead of a bare ValueError, so that only a
    deliberate refusal becomes one line; any other exception from a model is a bug and keeps its
    traceback. It is a ValueError too, for callers written against MMRec."""


class Interrupted(BaseException):
    """The run was stopped by a signal (SIGTERM); handled like Ctrl-C. A BaseException, so that
    ``except Exception`` blocks in the training code do not swallow it."""
