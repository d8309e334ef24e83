"""Turns a folder of class-named image folders into CIFAR-10's binary files (v2.data.convert).

  python -m v2.cli.convert --image_folder=my_images --data_path=my_data
  python run_trainer.py --data_path=my_data --num_layers=20 --validation_split=500
"""

from v2.cli import app, flags
from v2.data import convert
from v2.errors import UserError

FLAGS = flags.FLAGS


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s (flags are written --name=value)'
                        % ' '.join(argv[1:]))
    if not FLAGS.image_folder or not FLAGS.data_path:
        raise UserError('give --image_folder (one folder of images per class) and --data_path '
                        '(the new folder for the CIFAR files)')
    names, train, test = convert.convert(FLAGS.image_folder, FLAGS.data_path,
                                         FLAGS.test_fraction)
    print('wrote %d training and %d test images of %d classes (%s) to %s; train with: python '
          'run_trainer.py --data_path=%s' % (train, test, len(names), ', '.join(names),
                                             FLAGS.data_path, FLAGS.data_path))
    return 0


def run():
    """The console entry point (cifar-convert) and python -m."""
    app.run(main, flags.CONVERT)


if __name__ == '__main__':
    run()
