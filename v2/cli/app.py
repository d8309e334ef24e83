"""How every command of this package runs: absl's app.run with one-line errors.

A flag error, a flag that is not the program's own, or a UserError (a user's
mistake, whose setting names become flags here) is printed as one line on stderr
with exit status 2 or 1, never as a traceback. `call` does the same in-process
and returns the status and the line, for the tests.
"""

import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging

from v2.cli import flags as cli_flags
from v2.errors import UserError

FLAGS = flags.FLAGS


def program_name():
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'run'


class FlagsError(Exception):
    """A command line that absl or the program refuses (exit status 2)."""


def parse(argv: Sequence[str], own: Sequence[str]):
    """absl's flag parsing, then a refusal of any of our flags that is not `own`."""
    try:
        remaining = FLAGS(list(argv))
    except flags.Error as e:
        raise FlagsError('%s (see --helpfull)' % e) from None
    others = [name for name in cli_flags.ALL if FLAGS[name].present and name not in own]
    if others:
        raise FlagsError('--%s is not a flag of %s (see --helpfull)'
                         % (others[0], os.path.basename(argv[0])))
    if not FLAGS['verbosity'].present:
        logging.set_verbosity(logging.WARNING)   # TensorFlow's INFO lines would bury progress
    return remaining


def run(main: Callable, own: Sequence[str]):
    """app.run(main) with our flag checks; a UserError is one line and exit status 1."""
    def parser(argv):
        try:
            return parse(argv, own)
        except FlagsError as e:
            sys.stderr.write('%s: error: %s\n' % (program_name(), e))
            sys.exit(2)

    def guarded(argv):
        try:
            return main(argv)
        except UserError as e:
            sys.stderr.write('%s: error: %s\n' % (program_name(), e.flag_message()))
            sys.exit(1)
    for name in own:
        flags.declare_key_flag(name)              # --helpshort lists the program's own flags
    app.run(guarded, flags_parser=parser)


def call(main: Callable, argv: Sequence[str], own: Sequence[str]) -> tuple[int, str]:
    """Runs a program in this process as run() would: (exit status, its one error line).

    Flags are reset before parsing, so that tests can call one program after another.
    """
    FLAGS.unparse_flags()
    try:
        try:
            remaining = parse(argv, own)
        except FlagsError as e:
            return 2, '%s: error: %s' % (os.path.basename(argv[0]), e)
        try:
            status = main(remaining)
        except UserError as e:
            return 1, '%s: error: %s' % (os.path.basename(argv[0]), e.flag_message())
        except SystemExit as e:
            return int(e.code or 0), ''
        return int(status or 0), ''
    finally:
        FLAGS.unparse_flags()
