"""The one exception type the command line turns into a clean message (no traceback)."""


class CltmError(Exception):
    """A problem the user can fix: bad config, a missing file, data that cannot fill a request.

    The message says what is wrong and how to fix it.
    """
