"""How every command of this package runs: absl's app.run with one-line errors.

A flag error or a UserError (a user's mistake) is printed as one line on stderr
with exit status 2 or 1, never as a traceback.
"""

import os
import sys

from absl import app, flags, logging

from v2.errors import UserError

FLAGS = flags.FLAGS


def _program():
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'run'


def parse_flags(argv):
    """absl's flag parsing, with a one-line message for any flag error."""
    try:
        remaining = FLAGS(argv)
    except flags.Error as e:
        sys.stderr.write('%s: error: %s (see --helpfull)\n' % (_program(), e))
        sys.exit(2)
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)   # TensorFlow's INFO lines would bury progress
    return remaining


def run(main):
    """app.run(main) that turns a UserError into one line on stderr and exit status 1."""
    def guarded(argv):
        try:
            return main(argv)
        except UserError as e:
            sys.stderr.write('%s: error: %s\n' % (_program(), e))
            sys.exit(1)
    app.run(guarded, flags_parser=parse_flags)
