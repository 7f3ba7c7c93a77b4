"""The one exception type for mistakes a user can make.

A :class:`UserError` carries a single sentence that says what went wrong and what to do.
The command line prints it without a traceback and exits with status 2.
"""


class UserError(Exception):
    """A mistake in a recipe, an argument, a file or the data; the message says how to fix it."""
