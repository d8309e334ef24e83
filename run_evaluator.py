"""Evaluates checkpoints of run_trainer.py on test_batch.bin.

  python run_evaluator.py --data_path=cifar-10-batches-bin --ckpt_path=runs/resnet110

--ckpt_path is a checkpoint prefix or a folder (its latest checkpoint, or every
one with --all_checkpoints). The architecture and the data set come from the
checkpoint; an architecture flag given explicitly must match it.
"""

import os

from absl import flags

from v2 import data, evaluate, export, options
from v2.errors import UserError

flags.DEFINE_string('ckpt_path', None, 'Checkpoint prefix, or a folder of checkpoints.')
flags.DEFINE_boolean('all_checkpoints', False, 'Evaluate every checkpoint in the folder.')
flags.DEFINE_string('output_json', None, 'Also write the figures to this JSON file.')
flags.DEFINE_string('log_path', None,
                    'TensorBoard folder for the test figures of each checkpoint. Default with '
                    '--all_checkpoints: the trainer\'s, <checkpoint folder>/logs.')
flags.DEFINE_string('export_dir', None,
                    'Instead of evaluating: write the checkpoint as a SavedModel here (uint8 images '
                    'in, probabilities and classes out, mean subtraction built in).')
flags.DEFINE_list('images', [], 'Instead of evaluating: print the predicted classes of these '
                  'image files (PNG, JPEG, ...; resized to 32x32 where needed).')
flags.mark_flag_as_required('ckpt_path')

FLAGS = flags.FLAGS
flags.adopt_module_key_flags(options)      # --helpshort lists the shared flags too


def _log_path():
    if FLAGS.log_path or not FLAGS.all_checkpoints:
        return FLAGS.log_path
    folder = FLAGS.ckpt_path if os.path.isdir(FLAGS.ckpt_path) else os.path.dirname(FLAGS.ckpt_path)
    return os.path.join(folder, 'logs')


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s (flags are written --name=value)'
                        % ' '.join(argv[1:]))
    if FLAGS.export_dir or FLAGS.images:
        net, saved = evaluate.load_network(FLAGS.ckpt_path, options.explicit_architecture())
        class_names = data.DATASETS[saved.config.dataset].class_names
        serving = export.Serving(net, saved.pixel_mean, class_names)
        if FLAGS.export_dir:
            export.export_saved_model(serving, FLAGS.export_dir)
            print('wrote a SavedModel of %s (%s) to %s; inspect it with: saved_model_cli show '
                  '--dir %s --all' % (saved.config.describe(), saved.prefix, FLAGS.export_dir,
                                      FLAGS.export_dir))
        if FLAGS.images:
            export.predict_files(serving, FLAGS.images)
        return 0
    evaluate.evaluate_checkpoints(
        FLAGS.ckpt_path, FLAGS.data_path, options.explicit_architecture(),
        all_checkpoints=FLAGS.all_checkpoints, batch_size=FLAGS.eval_batch_size,
        output_json=FLAGS.output_json, precision=FLAGS.precision, log_path=_log_path())
    return 0


if __name__ == '__main__':
    options.run(main)
