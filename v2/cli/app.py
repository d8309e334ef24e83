"""How every command of this package runs: absl's app.run with one-line errors and its own help.

A flag error, a flag that is not the program's own, or a UserError (a user's
mistake, whose setting names become flags here) is printed as one line on stderr
with exit status 2 or 1, never as a traceback. `call` does the same in-process
and returns the status and the line, for the tests.

Every flag is defined in a flags module (v2.cli.flags; the tools' in v2.tools.flags),
so absl's --help (the main module's key flags) would list none and --helpfull every
loaded program's. Here --help and --helpshort list the program's own flags in the
groups of flags.HELP_GROUPS, and --helpfull adds absl's own; both are rendered by
absl (FlagValues.module_help, get_help). "Our" flags, refused to a program that does
not own them, are flags.ALL: those of every program loaded in the process.
"""

import os
import sys
from collections.abc import Callable, Sequence

from absl import app, flags, logging
from absl.flags import FlagValues

from v2.cli import flags as cli_flags
from v2.errors import UserError

FLAGS = flags.FLAGS


def program_name():
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else 'run'


class FlagsError(Exception):
    """A command line that absl or the program refuses (exit status 2)."""


def help_text(own: Sequence[str], full: bool = False) -> str:
    """The flags `own` with their help and defaults, in the groups of flags.HELP_GROUPS;
    `full` adds absl's own flags (logging, --flagfile, ...)."""
    view = FlagValues()                     # only for rendering: it is never parsed
    for title, names in cli_flags.HELP_GROUPS:
        for name in names:
            if name in own:
                flags.DEFINE_flag(FLAGS[name], view, module_name=title)
    parts = [view.module_help(title) for title, _ in cli_flags.HELP_GROUPS]
    if full:
        absl_view = FlagValues()
        for module in ('absl.app', 'absl.logging'):
            for flag in FLAGS.get_flags_for_module(module):
                flags.DEFINE_flag(flag, absl_view, module_name=module)
        parts.append(absl_view.get_help())
    else:
        parts.append('\n--flagfile=F reads flags from a file (later flags override it);\n'
                     '--helpfull also lists absl\'s flags (logging, --only_check_args, ...).')
    return '\n'.join(part for part in parts if part)


_PROGRAM = {'own': ()}                      # the flags of the program being parsed, for --help


class _HelpFlag(flags.BooleanFlag):
    """--help, --helpshort (--help of absl) and --helpfull: the program's own flags."""

    def __init__(self, name, short_name=None, full=False):
        super().__init__(name, False, 'show the help of this program\'s flags%s'
                         % (', and absl\'s' if full else ''), short_name=short_name,
                         allow_hide_cpp=True, allow_override=True)
        self.full = full

    def parse(self, argument):
        if self._parse(argument):
            main = sys.modules.get('__main__')
            doc = (getattr(main, '__doc__', None) or '\nUSAGE: %s [flags]\n' % program_name())
            sys.stdout.write('%s\nflags:\n%s\n' % (doc.rstrip('\n') + '\n',
                                                   help_text(_PROGRAM['own'], self.full)))
            sys.exit(0)


app.define_help_flags()                     # absl's, replaced by ours (allow_override)
for _flag in (_HelpFlag('help', short_name='?'), _HelpFlag('helpshort'),
              _HelpFlag('helpfull', full=True)):
    flags.DEFINE_flag(_flag)


def parse(argv: Sequence[str], own: Sequence[str]):
    """absl's flag parsing, then a refusal of any of our flags that is not `own`."""
    _PROGRAM['own'] = tuple(own)
    try:
        remaining = FLAGS(list(argv))
    except flags.Error as e:
        raise FlagsError('%s (see --help)' % e) from None
    others = [name for name in cli_flags.ALL if FLAGS[name].present and name not in own]
    if others:
        raise FlagsError('--%s is not a flag of %s (see --help)'
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
        except SystemExit as e:                     # --help
            return int(e.code or 0), ''
        try:
            status = main(remaining)
        except UserError as e:
            return 1, '%s: error: %s' % (os.path.basename(argv[0]), e.flag_message())
        except SystemExit as e:
            return int(e.code or 0), ''
        return int(status or 0), ''
    finally:
        FLAGS.unparse_flags()
