"""Trains a CIFAR ResNet, wide ResNet, VGG or plain net on the CIFAR binary files.

  python run_trainer.py --data_path=cifar-10-batches-bin --num_layers=110
  python run_trainer.py --flagfile=configs/wrn_28_10.flags

Restarting with the same --ckpt_path resumes where the run stopped; Ctrl-C or
SIGTERM saves a checkpoint first. All logic lives in the v2 package.
"""

import sys

from absl import flags

from v2 import download, model, options, train, train_options
from v2.errors import UserError
from v2.train_options import FLAGS, configs_from_flags

# --helpshort lists the flags of these modules as this program's own.
flags.adopt_module_key_flags(options)
flags.adopt_module_key_flags(train_options)


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s (flags are written --name=value)'
                        % ' '.join(argv[1:]))
    model_config, config = configs_from_flags()
    data_path = options.data_path(model_config)
    if FLAGS.download:
        download.download(model_config.dataset, data_path, FLAGS.download_url,
                          FLAGS.download_md5)
    if FLAGS.dry_run:
        print(model.summary(model.build(model_config)))
        train.dry_run(model_config, config, data_path)
        return 0
    result = train.train(model_config, config, data_path)
    if result.stopped_by:
        sys.exit(128 + result.stopped_by)
    return 0


if __name__ == '__main__':
    options.run(main)
