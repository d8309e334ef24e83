"""Evaluation: its figures against numpy, test-time augmentation, checkpoints, averages."""

import json
import os

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from conftest import averaged_and_live_nets, numpy_test_set, quiet, tiny_options, tiny_recipe

from v2.cli import app, evaluator, flags
from v2.errors import UserError
from v2.evaluation import evaluate
from v2.evaluation.calibration import Calibration
from v2.nets.model import ModelConfig
from v2.runtime import checkpoint
from v2.training import loop


class Lookup(tf.Module):
    """A 'net' whose logits for an image are a fixed row chosen by the image's first pixel."""

    def __init__(self, table, column=None):
        super().__init__()
        self.config = ModelConfig(num_layers=8, num_classes=table.shape[1])
        self.table = tf.constant(table, tf.float32)
        self.column = column

    def __call__(self, images, training=False):
        pixel = images[:, 0, 0 if self.column is None else self.column, 0]
        return tf.gather(self.table, tf.cast(tf.round(pixel), tf.int32))


def _images(values):
    return np.broadcast_to(np.asarray(values, np.uint8)[:, None, None, None],
                           (len(values), 32, 32, 3)).copy()


def test_cross_entropy_accuracy_and_per_class_figures_against_numpy():
    rng = np.random.default_rng(0)
    table = rng.normal(0, 2, (6, 3)).astype(np.float32)         # row k: logits of pixel k
    pixels = rng.integers(0, 6, 40)
    labels = rng.integers(0, 3, 40)
    evaluator = evaluate.Evaluator(Lookup(table), np.zeros([32, 32, 3], np.float32))
    batches = tf.data.Dataset.from_tensor_slices((_images(pixels), labels.astype(np.int32)))
    metrics = evaluator(batches.batch(7))                        # 5 full batches and one of 5
    logits = table[pixels]
    predicted = logits.argmax(axis=1)
    confusion = np.zeros((3, 3), int)
    np.add.at(confusion, (labels, predicted), 1)
    assert metrics.confusion == confusion.tolist() and metrics.num_examples == 40
    assert metrics.cross_entropy == pytest.approx(
        ref.softmax_cross_entropy(logits, labels).mean(), rel=1e-5)
    assert metrics.accuracy == pytest.approx(np.mean(predicted == labels))
    for k in range(3):
        assert metrics.per_class_accuracy[k] == pytest.approx(
            confusion[k, k] / max(confusion[k].sum(), 1))
        assert metrics.per_class_precision[k] == pytest.approx(
            confusion[k, k] / max(confusion[:, k].sum(), 1))
    assert evaluator.traces == 1


def test_test_time_augmentation_averages_the_image_and_its_mirror():
    table = np.array([[4.0, 0.0], [0.0, 1.0]], np.float32)
    net = Lookup(table, column=31)              # reads the last column: the flip shows
    images = np.zeros((2, 32, 32, 3), np.uint8)
    images[0, :, 0] = 1                         # its mirror has 1 in the last column
    images[1, :, 31] = 1
    labels = np.array([1, 1], np.int32)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(2)
    mean = np.zeros([32, 32, 3], np.float32)
    plain = evaluate.Evaluator(net, mean)(batches)
    averaged = evaluate.Evaluator(net, mean, tta=True)(batches)
    both = (table[0] + table[1]) / 2                            # each image: one view of each
    assert plain.accuracy == 0.5 and averaged.accuracy == 0.0
    assert averaged.cross_entropy == pytest.approx(
        ref.softmax_cross_entropy(np.stack([both, both]), labels).mean(), rel=1e-6)


def test_evaluate_every_checkpoint_of_a_folder(trained, session_data, tmp_path, capsys):
    out_json = tmp_path / 'eval.json'
    results = evaluator.evaluate_and_report(
        str(trained / 'ckpt'), evaluate.EvalOptions(data_path=str(session_data), wanted={},
                                                    all_checkpoints=True, batch_size=10),
        output_json=str(out_json), log_path=str(tmp_path / 'logs')).results
    assert [(r.step, r.which) for r in results] == [(3, ''), (6, 'last')]
    report = json.loads(out_json.read_text())
    assert report['model'] == 'ResNet-8' and len(report['checkpoints']) == 2
    assert report['checkpoints'][1]['error'] == pytest.approx(1 - results[1].metrics.accuracy)
    assert report['checkpoints'][1]['calibration']['bins'] == 15
    assert all(np.array(r.metrics.confusion).sum() == 24 for r in results)
    text = capsys.readouterr().out
    assert 'ResNet-8 on 24 test images' in text and 'per class' in text
    assert 'confusion matrix' in text and os.listdir(tmp_path / 'logs' / 'evaluator')


def test_the_trainers_last_evaluation_agrees_with_the_evaluator(session_data, tmp_path):
    records = []
    loop.train(ModelConfig(num_layers=8), tiny_recipe(num_iterations=3),
               tiny_options(tmp_path, eval_every=3), str(session_data), out=quiet,
               on_record=lambda *r: records.append(r))
    metrics = evaluate.evaluate_checkpoints(str(tmp_path / 'ckpt'), evaluate.EvalOptions(
        data_path=str(session_data)), out=quiet).results[0].metrics
    (_, split, during), = [r for r in records if r[1] != 'train']
    assert split == 'test' and during['accuracy'] == pytest.approx(metrics.accuracy)
    assert during['cross_entropy'] == pytest.approx(metrics.cross_entropy, rel=1e-5)


def test_evaluation_refuses_an_explicit_architecture_that_differs(trained, session_data):
    with pytest.raises(UserError, match=r'ResNet-8 checkpoint \(num_layers=8\), but ResNet-20 '
                                        r'\(num_layers=20\) was asked for'):
        evaluate.evaluate_checkpoints(str(trained / 'ckpt'), evaluate.EvalOptions(
            data_path=str(session_data), wanted={'num_layers': 20}), out=quiet)


def test_a_run_with_weight_averages_is_evaluated_with_them(session_data, tmp_path):
    result = loop.train(ModelConfig(num_layers=8), tiny_recipe(ema_decay=0.5),
                        tiny_options(tmp_path), str(session_data), out=quiet)
    saved = checkpoint.Saved(result.checkpoint)
    assert saved.has_ema
    averaged, _ = evaluate.load_network(result.checkpoint, out=quiet)
    live, _ = evaluate.load_network(result.checkpoint, out=quiet, averaged=False)
    restorer = evaluate.Restorer(saved, averaged=True)
    restorer.load(saved)
    for a, b in zip(averaged.variables, restorer.ema.averages):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert any(not np.array_equal(a.numpy(), b.numpy())
               for a, b in zip(averaged.variables, live.variables))
    lines = []
    evaluator.evaluate_and_report(result.checkpoint, evaluate.EvalOptions(
        data_path=str(session_data)), out=lines.append)
    assert 'weight averages' in lines[-1].splitlines()[0]


def _cross_entropies(nets, folder):
    """numpy's mean test cross-entropy of each net (numpy_ref's forward pass, evaluation mode)."""
    x, labels = numpy_test_set(folder)
    return [ref.softmax_cross_entropy(ref.preact_resnet_logits(net, x), labels).mean()
            for net in nets]


def test_the_trainers_evaluation_of_a_run_with_weight_averages_uses_them(averaged_run,
                                                                         session_data):
    """With ema_decay the trainer evaluates the averaged net (actions.Evaluate): its test
    figures at step 4 are numpy's forward pass of numpy's averages of the run's weights
    (numpy_ref.weight_averages), not of the live weights, which give another figure; its
    printed line says the cross-entropy and the accuracy under their names."""
    root, recipe, records, lines = averaged_run
    nets = averaged_and_live_nets(root, recipe)
    averaged, live = _cross_entropies(nets, session_data)
    assert averaged != pytest.approx(live, rel=1e-3)                   # they do differ
    (step, split, figures), = [r for r in records if r[1] != 'train']
    assert (step, split) == (4, 'test')
    assert figures['cross_entropy'] == pytest.approx(averaged, rel=1e-4)
    x, labels = numpy_test_set(session_data)
    accuracy = np.mean(ref.preact_resnet_logits(nets[0], x).argmax(-1) == labels)
    assert figures['accuracy'] == pytest.approx(accuracy)
    printed, = [line.split() for line in lines if line.startswith('step 4: test ')]
    assert printed[2:4] + printed[5:6] == ['test', 'cross-entropy', 'accuracy']
    assert float(printed[4]) == pytest.approx(averaged, abs=6e-5)    # printed to 4 decimals
    assert printed[6] == '%.2f%%' % (100 * accuracy)


def test_the_evaluator_program_reports_the_averages_unless_told_otherwise(averaged_run,
                                                                         session_data, tmp_path):
    """run_evaluator.py on a run with weight averages: its test cross-entropy is numpy's of
    the averaged weights (numpy_ref.weight_averages) by default, and of the live weights of
    the last step with --averaged=false; the JSON says which."""
    root, recipe, *_ = averaged_run
    expected = dict(zip((True, False),
                        _cross_entropies(averaged_and_live_nets(root, recipe), session_data)))
    for averaged in (True, False):
        report = tmp_path / ('%s.json' % averaged)
        status, line = app.call(evaluator.main, [
            'run_evaluator.py', '--ckpt_path=%s' % (root / 'ckpt'),
            '--data_path=%s' % session_data, '--output_json=%s' % report,
            *([] if averaged else ['--averaged=false'])], flags.EVALUATOR)
        assert status == 0, line
        written = json.loads(report.read_text())
        assert written['weight_averages'] is averaged
        checkpoint_row, = written['checkpoints']
        assert checkpoint_row['step'] == 4
        assert checkpoint_row['cross_entropy'] == pytest.approx(expected[averaged], rel=1e-4)


def _calibration(ece, nll, brier, temperature=1.0):
    return Calibration(ece=ece, nll=nll, brier=brier, bin_count=[1] * 15,
                       bin_confidence=[0.5] * 15, bin_accuracy=[0.5] * 15,
                       temperature=temperature)


def test_every_column_of_the_report_is_the_figure_its_header_names():
    """The printed report of a last/best pair, each column read by its header and checked
    against what the test computes from the confusion matrix (rows: true class): accuracy
    trace/N, error 1 - accuracy, cross-entropy sum/N, per class precision C[k,k] / column
    sum and recall C[k,k] / row sum (of the last checkpoint), the matrix as rows of true
    classes; the calibration figures (before and after the temperature) where they are
    given. Precision and recall differ in every class, so a swap of the two shows."""
    last_confusion = np.array([[5, 1, 0], [3, 2, 1], [0, 4, 6]])  # rows 6 6 10, columns 8 7 7
    best_confusion = np.array([[6, 0, 0], [0, 6, 0], [0, 0, 10]])
    results = []
    for which, step, confusion, ce_sum, calibration, scaled in (
            ('last', 40, last_confusion, 22 * 1.25, _calibration(0.211, 1.25, 0.61),
             _calibration(0.031, 0.98, 0.52, temperature=1.7)),
            ('best', 20, best_confusion, 22 * 0.5, _calibration(0.102, 0.5, 0.33),
             _calibration(0.012, 0.45, 0.31, temperature=0.8))):
        metrics = evaluate.Metrics.from_confusion(confusion, ce_sum)
        metrics.calibration = calibration
        results.append(evaluate.Result('run/ckpt-%d' % step, step, metrics, which,
                                       0.9 if which == 'best' else None, scaled, 7))
    lines = evaluator.report(results, ModelConfig(num_layers=8), ['cat', 'dog', 'ship']
                             ).splitlines()

    def table(header_words, count):
        """The `count` lines under the one header that starts with these words, split."""
        at, = [i for i, line in enumerate(lines) if line.split()[:len(header_words)]
               == header_words]
        return [line.split() for line in lines[at + 1:at + 1 + count]]

    rows = table(['step', 'cross-entropy', 'accuracy', 'error', 'ECE', 'Brier', 'checkpoint'],
                 2)
    for row, (confusion, ce, ece, brier) in zip(rows, ((last_confusion, 1.25, 21.1, 0.61),
                                                       (best_confusion, 0.5, 10.2, 0.33))):
        accuracy = 100 * np.trace(confusion) / confusion.sum()
        which, step, *numbers, prefix = row
        assert numbers == ['%.4f' % ce, '%.2f%%' % accuracy, '%.2f%%' % (100 - accuracy),
                           '%.2f%%' % ece, '%.4f' % brier], row
    assert any(line.startswith('best: the checkpoint of the highest validation accuracy during '
                               'training (90.00% at step 20)') for line in lines)
    rows = table(['step', 'temperature', 'NLL', 'before/after', 'ECE', 'before/after', 'Brier',
                  'before/after'], 2)
    assert rows[0] == ['last', '40', '1.700', '1.2500/0.9800', '21.10%/3.10%', '0.6100/0.5200']
    assert rows[1] == ['best', '20', '0.800', '0.5000/0.4500', '10.20%/1.20%', '0.3300/0.3100']
    rows = table(['per', 'class', '(ckpt-40):', 'precision', 'recall'], 3)
    for k, row in enumerate(rows):
        c = last_confusion
        assert row == [['cat', 'dog', 'ship'][k], '%.2f%%' % (100 * c[k, k] / c[:, k].sum()),
                       '%.2f%%' % (100 * c[k, k] / c[k].sum())]
    rows = table(['confusion', 'matrix', '(rows:', 'true', 'class,', 'columns:', 'predicted'], 4)
    assert rows[0] == ['cat', 'dog', 'ship']
    assert [[int(n) for n in row[1:]] for row in rows[1:]] == last_confusion.tolist()
    assert [row[0] for row in rows[1:]] == ['cat', 'dog', 'ship']
