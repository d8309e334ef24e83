"""The evaluator's main: test-set figures of checkpoints, or a SavedModel/TFLite export,
or predictions for image files."""

import os

from v2.cli import app, flags
from v2.data import cifar
from v2.errors import UserError
from v2.evaluation import evaluate, export, onnx_export, reliability

FLAGS = flags.FLAGS


def _log_path():
    if FLAGS.log_path or not FLAGS.all_checkpoints:
        return FLAGS.log_path
    folder = FLAGS.ckpt_path if os.path.isdir(FLAGS.ckpt_path) else os.path.dirname(FLAGS.ckpt_path)
    return os.path.join(folder, 'logs')


def main(argv):
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s (flags are written --name=value)'
                        % ' '.join(argv[1:]))
    if FLAGS.ckpt_path is None:
        raise UserError('--ckpt_path: give a checkpoint prefix or a folder of checkpoints')
    if FLAGS.tflite and not FLAGS.export_dir:
        raise UserError('--tflite needs --export_dir (the SavedModel they are converted from)')
    if FLAGS.onnx and not FLAGS.export_dir:
        raise UserError('--onnx needs --export_dir (the SavedModel it is converted from)')
    if FLAGS.onnx:
        onnx_export.converter()             # a missing package refused before anything runs
    if FLAGS.images and FLAGS.ckpt_path.endswith('.tflite'):
        export.predict_files_tflite(FLAGS.ckpt_path, FLAGS.images)
        return 0
    if FLAGS.export_dir or FLAGS.images:
        net, saved = evaluate.load_network(FLAGS.ckpt_path, flags.explicit_architecture(),
                                           averaged=FLAGS.averaged,
                                           devices=tuple(FLAGS.devices))
        class_names = cifar.spec_of(saved.config.dataset, FLAGS.data_path,
                                    saved.config.num_classes).class_names
        serving = export.Serving(net, saved.pixel_mean, class_names)
        if FLAGS.export_dir:
            export.export_saved_model(serving, FLAGS.export_dir)
            print('wrote a SavedModel of %s (%s) to %s; inspect it with: saved_model_cli show '
                  '--dir %s --all' % (saved.config.describe(), saved.prefix, FLAGS.export_dir,
                                      FLAGS.export_dir))
            if FLAGS.tflite:
                export.export_tflite_files(FLAGS.export_dir, FLAGS.tflite, saved,
                                           flags.data_path(saved.config))
            if FLAGS.onnx:
                onnx_export.export_onnx(FLAGS.export_dir, saved, flags.data_path(saved.config))
        if FLAGS.images:
            export.predict_files(serving, FLAGS.images)
        return 0
    if FLAGS.reliability_png:
        reliability.pyplot()                # matplotlib: refused before anything is evaluated
        evaluate.check_writable(FLAGS.reliability_png, 'reliability_png')
    results = evaluate.evaluate_checkpoints(
        FLAGS.ckpt_path, FLAGS.data_path, flags.explicit_architecture(),
        all_checkpoints=FLAGS.all_checkpoints, batch_size=FLAGS.eval_batch_size,
        output_json=FLAGS.output_json, precision=FLAGS.precision, log_path=_log_path(),
        tta=FLAGS.tta, averaged=FLAGS.averaged, devices=tuple(FLAGS.devices),
        temperature_scaling=FLAGS.temperature_scaling)
    if FLAGS.reliability_png:
        shown = next((r for r in results if r.which == 'last'), results[-1])
        reliability.draw(shown, FLAGS.reliability_png)
        print('wrote %s' % FLAGS.reliability_png)
    return 0


def run():
    """The console entry point (cifar-evaluate) and run_evaluator.py."""
    app.run(main, flags.EVALUATOR)
