"""The absl flags shared by run_trainer.py and run_evaluator.py, and how they run.

Importing this module defines the shared flags once; each script adds its own.
`run(main)` is absl's app.run with two additions: a flag error or a UserError is
printed as one line on stderr with exit status 2 or 1, never as a traceback.
"""

import os
import sys

from absl import app, flags, logging

from v2 import data
from v2.errors import UserError
from v2.model import ModelConfig, units_per_stage

FLAGS = flags.FLAGS
ARCHITECTURE_FLAGS = ('num_layers', 'shortcut_connections')

flags.DEFINE_string('data_path', 'cifar-10-batches-bin',
                    'Folder of the CIFAR-10 binary files (data_batch_1..5.bin, test_batch.bin).')
flags.DEFINE_alias('path', 'data_path')
flags.DEFINE_integer('num_layers', 110, 'Depth 6n+2 of the ResNet: 20, 32, 44, 56, 110, 1202, ...')
flags.DEFINE_boolean('shortcut_connections', True,
                     'Add the identity shortcuts; False gives the plain net of He et al. 2015, '
                     'Figure 6.')
flags.DEFINE_integer('eval_batch_size', 500, 'Images per evaluation batch.', lower_bound=1)


def _valid_depth(num_layers):
    try:
        units_per_stage(num_layers)
    except UserError as e:
        raise flags.ValidationError(str(e).split(': ', 1)[1]) from None
    return True


flags.register_validator('num_layers', _valid_depth)


def model_config():
    """The ModelConfig the architecture flags describe."""
    return ModelConfig(num_layers=FLAGS.num_layers,
                       shortcut_connections=FLAGS.shortcut_connections,
                       num_classes=data.NUM_CLASSES)


def explicit_architecture_flags():
    """The architecture flags the user set on the command line (or in a flag file)."""
    return {name for name in ARCHITECTURE_FLAGS if FLAGS[name].present}


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
