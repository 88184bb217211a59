"""Errors that the command line reports as one clear line (no traceback)."""


class HarnessError(Exception):
    """Base class: its message is printed alone, as ``error: <message>``."""


class ConfigError(HarnessError):
    """A config file or command-line override is wrong."""


class DataError(HarnessError):
    """A dataset file is missing or malformed."""


class TrainingError(HarnessError):
    """Training of one grid point failed (for example a NaN loss)."""
