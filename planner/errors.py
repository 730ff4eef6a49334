"""The one exception type for problems a user can cause (bad file, bad spec, bad budget)."""


class MpqError(Exception):
    """A user error: the message says what is wrong and what to do. The CLI prints it on one
    line and exits with code 2."""
