"""The one exception the data layer raises."""


class DataError(RuntimeError):
    """A data file is missing, corrupt or inconsistent.  The message is one line naming the file and the fix."""
