"""Errors that users see. Each names what is wrong and where."""


class RaypoisonError(Exception):
    """Base class of the errors the command line reports without a traceback."""


class ConfigError(RaypoisonError):
    """A benchmark configuration is malformed; ``path`` names the offending key."""

    MAX_LENGTH = 2000  # a message never repeats more of the input than this

    def __init__(self, path: str, message: str):
        path, message = _cut(path, 300), _cut(message, self.MAX_LENGTH)
        self.path = path
        self.message = message
        super().__init__(f"{path}: {message}" if path else message)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + f"… ({len(text) - limit:,} more characters)"


class DataError(RaypoisonError):
    """A data set or checkpoint is missing or malformed."""


class ResultsError(RaypoisonError):
    """A results dataset cannot be read or written."""
