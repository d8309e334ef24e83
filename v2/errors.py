"""The one exception type that means "the user did something wrong".

The scripts catch it and print its message as a single line with a non-zero exit
status, never a traceback. Everything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """A mistake in a flag, a file or a folder, explained in one line."""
