"""The trainer's main: flags -> ModelConfig, Recipe, RunOptions -> v2.training.loop.train."""

import sys

from v2.cli import app, flags
from v2.data import download
from v2.errors import UserError
from v2.nets import model
from v2.training import inputs, loop

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s (flags are written --name=value)'
                        % ' '.join(argv[1:]))
    model_config = flags.model_config()
    recipe = flags.recipe()
    options = flags.run_options(model_config)
    data_path = flags.data_path(model_config)
    if FLAGS.download:
        download.download(model_config.dataset, data_path, FLAGS.download_url,
                          FLAGS.download_md5)
    if FLAGS.dry_run:                 # every check of a real run, devices included
        model_config, data = loop.dry_run(model_config, recipe, options, data_path)
        print(model.summary(model.build(model_config)))
        inputs.dry_run(model_config, recipe, data_path, data=data)
        return 0
    result = loop.train(model_config, recipe, options, data_path)
    if result.stopped_by:
        sys.exit(128 + result.stopped_by)
    return 0


def run():
    """The console entry point (cifar-train) and run_trainer.py."""
    app.run(main, flags.TRAINER)
