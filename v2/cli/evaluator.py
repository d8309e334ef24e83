"""The evaluator's main: test-set figures of checkpoints, or a SavedModel/TFLite export,
or predictions for image files.

The library computes the figures (v2.evaluation.evaluate.evaluate_checkpoints); this
program prints them (report), writes them to --output_json and, at each checkpoint's
step, to TensorBoard (evaluate_and_report).
"""

import json
import os

import tensorflow as tf

from v2.cli import app, flags
from v2.data import cifar
from v2.errors import UserError
from v2.evaluation import evaluate, export, onnx_export, reliability
from v2.evaluation.calibration import at_bound

FLAGS = flags.FLAGS


def _log_path():
    if FLAGS.log_path or not FLAGS.all_checkpoints:
        return FLAGS.log_path
    folder = FLAGS.ckpt_path if os.path.isdir(FLAGS.ckpt_path) else os.path.dirname(FLAGS.ckpt_path)
    return os.path.join(folder, 'logs')


def report(results, config, class_names, how=''):
    """The printed report: per-checkpoint table with calibration (and after temperature
    scaling), then per-class accuracy of the final checkpoint (evaluate.final)."""
    lines = ['%s on %d test images%s' % (config.describe(), results[-1].metrics.num_examples, how),
             '%4s %8s %14s %10s %8s %8s %7s  %s' % ('', 'step', 'cross-entropy', 'accuracy',
                                                  'error', 'ECE', 'Brier', 'checkpoint')]
    for r in results:
        m, c = r.metrics, r.metrics.calibration
        lines.append('%4s %8s %14.4f %9.2f%% %7.2f%% %7.2f%% %7.4f  %s'
                     % (r.which, r.step, m.cross_entropy, 100 * m.accuracy, 100 * m.error,
                        100 * c.ece, c.brier, r.prefix))
    lines.append('ECE: %d equal-width confidence bins; cross-entropy = NLL; Brier: summed over '
                 'the classes (0-2)' % len(results[-1].metrics.calibration.bin_count))
    best = [r for r in results if r.which == 'best']
    if best:
        lines.append('best: the checkpoint of the highest validation accuracy during training '
                     '(%.2f%% at step %s); both figures are on the test set'
                     % (100 * best[0].validation_accuracy, best[0].step))
    if results[-1].scaled:
        lines.append('temperature scaling, fitted on the %d validation images:'
                     % results[-1].validation_images)
        lines.append('%4s %8s %12s %16s %18s %16s' % ('', 'step', 'temperature', 'NLL before/after',
                                                     'ECE before/after', 'Brier before/after'))
        for r in results:
            c, t = r.metrics.calibration, r.scaled
            lines.append('%4s %8s %12.3f %7.4f/%-8.4f %8.2f%%/%-8s %7.4f/%-8.4f%s'
                         % (r.which, r.step, t.temperature, c.nll, t.nll, 100 * c.ece,
                            '%.2f%%' % (100 * t.ece), c.brier, t.brier,
                            '  (the search\'s bound)' if at_bound(t.temperature) else ''))
    shown = evaluate.final(results)
    last = shown.metrics
    lines.append('per class (%s):   precision   recall (= accuracy)'
                 % os.path.basename(shown.prefix))
    lines.extend('  %-14s %9.2f%% %9.2f%%' % (name, 100 * p, 100 * r) for name, p, r in
                 zip(class_names, last.per_class_precision, last.per_class_accuracy))
    if len(class_names) <= 20:          # CIFAR-100's 100x100 matrix is in the JSON only
        width = max(5, len(str(max(max(row) for row in last.confusion))) + 1)
        lines.append('confusion matrix (rows: true class, columns: predicted class):')
        lines.append(' ' * 14 + ''.join('%*s' % (width, name[:width - 1]) for name in class_names))
        lines.extend('  %-12s' % name + ''.join('%*d' % (width, n) for n in row)
                     for name, row in zip(class_names, last.confusion))
    return '\n'.join(lines)


def write_summaries(evaluation, log_path, out=print):
    """Each checkpoint's test cross-entropy and accuracy in TensorBoard at its step, in the
    run log_path/evaluator beside the trainer's runs (not the best: it repeats a step)."""
    writer = None
    for r in evaluation.results:
        if r.step is not None and r.which != 'best':
            writer = writer or tf.summary.create_file_writer(os.path.join(log_path, 'evaluator'))
            with writer.as_default(step=r.step):
                tf.summary.scalar('cross_entropy', r.metrics.cross_entropy)
                tf.summary.scalar('accuracy', r.metrics.accuracy)
    if writer:
        writer.flush()
        out('TensorBoard: tensorboard --logdir=%s (run "evaluator")' % log_path)


def write_json(evaluation, path):
    """The figures of every checkpoint, with what they were evaluated as, to a JSON file."""
    config, spec = evaluation.config, evaluation.spec
    with open(path, 'w') as f:
        json.dump({'model': config.describe(),
                   'architecture': json.loads(config.to_json()),
                   'test_files': list(spec.test_files),
                   'class_names': list(spec.class_names), 'tta': evaluation.tta,
                   'weight_averages': evaluation.weight_averages,
                   'checkpoints': [r.to_dict() for r in evaluation.results]}, f, indent=1)


def evaluate_and_report(ckpt_path, options, *, output_json=None, log_path=None, out=print):
    """evaluate.evaluate_checkpoints, then the report printed (`out`), the figures in
    output_json and, with log_path, in TensorBoard; the Evaluation. output_json is refused
    where its folder is missing, once the checkpoints are read but before any computing."""
    prepared = evaluate.prepare(ckpt_path, options, out=out)
    if output_json:
        evaluate.check_writable(output_json, 'output_json')
    evaluation = evaluate.evaluate_prepared(prepared, out=out)
    if log_path:
        write_summaries(evaluation, log_path, out)
    how = ((' with flipped views averaged' if evaluation.tta else '')
           + (', weight averages' if evaluation.weight_averages else ''))
    out(report(evaluation.results, evaluation.config, evaluation.spec.class_names, how))
    if output_json:
        write_json(evaluation, output_json)
        out('wrote %s' % output_json)
    return evaluation


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
                                           data_path=flags.data_path(saved.config))
            if FLAGS.onnx:
                onnx_export.export_onnx(FLAGS.export_dir, saved,
                                        data_path=flags.data_path(saved.config))
        if FLAGS.images:
            export.predict_files(serving, FLAGS.images)
        return 0
    if FLAGS.reliability_png:
        reliability.pyplot()                # matplotlib: refused before anything is evaluated
        evaluate.check_writable(FLAGS.reliability_png, 'reliability_png')
    options = evaluate.EvalOptions(
        data_path=FLAGS.data_path, wanted=flags.explicit_architecture(),
        all_checkpoints=FLAGS.all_checkpoints, batch_size=FLAGS.eval_batch_size,
        precision=FLAGS.precision, tta=FLAGS.tta, averaged=FLAGS.averaged,
        devices=tuple(FLAGS.devices), temperature_scaling=FLAGS.temperature_scaling)
    evaluation = evaluate_and_report(FLAGS.ckpt_path, options, output_json=FLAGS.output_json,
                                     log_path=_log_path())
    if FLAGS.reliability_png:
        reliability.draw(evaluate.final(evaluation.results), FLAGS.reliability_png)
        print('wrote %s' % FLAGS.reliability_png)
    return 0


def run():
    """The console entry point (cifar-evaluate) and run_evaluator.py."""
    app.run(main, flags.EVALUATOR)
