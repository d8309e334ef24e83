"""The one exception type that means "the user did something wrong".

The library names its settings as a Python user knows them (`lr_values`,
`data_path`); the command line turns those names into its flags (`--lr_values`)
and prints the message as a single line with a non-zero exit status, never a
traceback. Everything else is a bug and keeps its traceback.
"""

import re
from collections.abc import Sequence


class UserError(Exception):
    """A mistake in a setting, a file or a folder, explained in one line.

    `settings` lists the setting names the message mentions; flag_message() writes
    the first mention of each as a flag (not where the name is part of a path or
    a value).
    """

    def __init__(self, message: str, settings: Sequence[str] = ()):
        super().__init__(message)
        self.settings = tuple(settings)

    def flag_message(self) -> str:
        """The message in the command line's words: `lr_values` becomes `--lr_values`."""
        message = str(self)
        for name in self.settings:
            message = re.sub(r'(?<![\w/.=-])%s\b' % re.escape(name), '--' + name, message,
                             count=1)
        return message
