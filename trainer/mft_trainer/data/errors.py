"""The one error type of the data pipeline."""


class DataError(ValueError):
    """Input data cannot be used. The message names the file (and line where there is one),
    what was expected and what was found."""
