"""Errors that users see. Each names what is wrong and where."""


class RaypoisonError(Exception):
    """Base class of the errors the command line reports without a traceback."""


class ConfigError(RaypoisonError):
    """A benchmark configuration is malformed; ``path`` names the offending key."""

    def __init__(self, path: str, message: str):
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


class DataError(RaypoisonError):
    """A data set or checkpoint is missing or malformed."""


class ResultsError(RaypoisonError):
    """A results dataset cannot be read or written."""
