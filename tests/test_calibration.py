"""Calibration figures and temperature scaling against numpy, and the best-on-validation
checkpoint that training keeps apart and the evaluator reports beside the last."""

import json
import math
import sys

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from conftest import all_tensors, quiet

from v2.errors import UserError
from v2.evaluation import calibration, evaluate
from v2.evaluation.calibration import Calibration
from v2.nets.model import ModelConfig
from v2.runtime import checkpoint

TINY = ModelConfig(num_layers=8)


def test_ece_nll_and_brier_of_four_hand_made_images():
    """Logits log(p) have softmax p. Confidences 0.9, 0.9, 0.5, 0.41 fall in bins 14
    (13/15, 14/15], 8 (7/15, 8/15] and 7 (6/15, 7/15]; the other twelve are empty.
      ECE   = 2/4 |1/2 - 0.9| + 1/4 |1 - 0.5| + 1/4 |0 - 0.41| = 0.2 + 0.125 + 0.1025
      NLL   = -(ln 0.9 + ln 0.05 + ln 0.5 + ln 0.25) / 4
      Brier = (0.015 + 1.715 + 0.38 + 0.8462) / 4 (rows: 0.1^2+0.05^2+0.05^2, ...)."""
    p = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.41, 0.34, 0.25]])
    labels = np.array([0, 1, 0, 2])
    c = Calibration.of(np.log(p), labels)
    assert c.ece == pytest.approx(0.4275, abs=1e-12)
    assert c.nll == pytest.approx(-(math.log(0.9) + math.log(0.05) + math.log(0.5)
                                    + math.log(0.25)) / 4, rel=1e-12)
    assert c.brier == pytest.approx((0.015 + 1.715 + 0.38 + 0.8462) / 4, rel=1e-12)
    counts = [0] * 15
    counts[13], counts[7], counts[6] = 2, 1, 1
    assert c.bin_count == counts
    assert c.bin_accuracy[13] == 0.5 and c.bin_confidence[13] == pytest.approx(0.9)
    assert c.bin_confidence[0] == 0.0 and c.bin_accuracy[0] == 0.0        # empty: weighs nothing
    assert c.to_dict()['bins'] == 15


def test_the_figures_match_a_loop_by_loop_numpy_oracle_on_random_logits():
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 3, (500, 10))
    labels = rng.integers(0, 10, 500)
    c = Calibration.of(logits, labels)
    ece, brier = ref.calibration(logits, labels)
    assert c.ece == pytest.approx(ece, abs=1e-12) and c.brier == pytest.approx(brier, rel=1e-12)
    assert c.nll == pytest.approx(ref.softmax_cross_entropy(logits, labels).mean(), rel=1e-12)
    assert sum(c.bin_count) == 500 and 0 in c.bin_count          # some bins are empty here


def _nll(logits, labels, t):
    return ref.softmax_cross_entropy(logits / t, labels).mean()


def test_the_fitted_temperature_minimises_the_validation_nll():
    """Labels drawn from softmax(z), logits 3z: an over-confident net whose best temperature
    is about 3; the fit is the minimum of numpy's NLL over a fine grid of temperatures."""
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 10))
    p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    labels = (rng.random((4000, 1)) > p.cumsum(axis=1)).sum(axis=1)    # drawn from each row
    logits = 3 * z
    t = calibration.fit_temperature(logits, labels)
    coarse = np.linspace(0.5, 6, 221)
    best = coarse[np.argmin([_nll(logits, labels, g) for g in coarse])]
    fine = np.linspace(best - 0.025, best + 0.025, 101)
    best = fine[np.argmin([_nll(logits, labels, g) for g in fine])]
    assert t == pytest.approx(best, abs=1e-3)
    assert 2.7 < t < 3.3
    before, after = Calibration.of(logits, labels), Calibration.of(logits, labels, t)
    assert after.nll < before.nll and after.ece < before.ece / 3
    assert after.temperature == t


def test_a_net_right_on_every_image_is_fitted_to_the_lowest_temperature():
    """With every validation image right, the NLL falls as T -> 0: the fit stops at its
    bound, 1e-3, rather than run away."""
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    t = calibration.fit_temperature(logits, [0, 1])
    assert t == pytest.approx(1e-3) and calibration.at_bound(t)
    assert not calibration.at_bound(calibration.fit_temperature(logits, [0, 0]))


class Lookup(tf.Module):
    """Logits: a fixed row of `table` chosen by an image's first pixel."""

    def __init__(self, table):
        super().__init__()
        self.config = ModelConfig(num_layers=8, num_classes=table.shape[1])
        self.table = tf.constant(table, tf.float32)

    def __call__(self, images, training=False):
        return tf.gather(self.table, tf.cast(tf.round(images[:, 0, 0, 0]), tf.int32))


def test_the_evaluator_keeps_the_logits_of_every_batch_in_order():
    rng = np.random.default_rng(1)
    table = rng.normal(0, 2, (7, 4)).astype(np.float32)
    pixels = rng.integers(0, 7, 30)
    labels = rng.integers(0, 4, 30).astype(np.int32)
    images = np.broadcast_to(pixels.astype(np.uint8)[:, None, None, None], (30, 32, 32, 3))
    evaluator = evaluate.Evaluator(Lookup(table), np.zeros([32, 32, 3], np.float32),
                                   keep_logits=True)
    batches = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)  # 8, 8, 8, 6
    m = evaluator(batches)
    np.testing.assert_array_equal(m.logits, table[pixels])
    np.testing.assert_array_equal(m.labels, labels)
    ece, brier = ref.calibration(table[pixels], labels)
    assert m.calibration.ece == pytest.approx(ece, abs=1e-6)
    assert m.calibration.brier == pytest.approx(brier, rel=1e-6)


# --- the best checkpoint on validation ---------------------------------------------------------

def test_training_keeps_the_checkpoint_of_the_best_validation_accuracy_apart(validated):
    root, records = validated
    evaluations = [(step, m['accuracy']) for step, split, m in records if split == 'validation']
    best_step = max(evaluations, key=lambda e: (e[1], -e[0]))[0]      # the first of the best
    record = checkpoint.read_best(str(root / 'ckpt'))
    assert record['step'] == best_step
    assert record['validation_accuracy'] == pytest.approx(dict(evaluations)[best_step])
    # The kept checkpoint is the state at that step: the rolling save of the same step.
    rolling = str(root / 'ckpt' / ('ckpt-%d' % best_step))
    kept = all_tensors(record['checkpoint'])
    assert kept.keys() == all_tensors(rolling).keys()
    for name, value in all_tensors(rolling).items():
        if name.startswith('save_counter'):              # counts the saves of both folders
            continue
        np.testing.assert_array_equal(kept[name], value, err_msg=name)
    assert tf.train.latest_checkpoint(str(root / 'ckpt')).endswith('ckpt-8')  # still the last


def test_the_evaluator_reports_the_last_and_the_best_on_the_test_set(validated, session_data,
                                                                  tmp_path):
    root, _ = validated
    lines = []
    from v2.cli import evaluator
    results = evaluator.evaluate_and_report(
        str(root / 'ckpt'), evaluate.EvalOptions(data_path=str(session_data),
                                                 temperature_scaling=True),
        out=lines.append, output_json=str(tmp_path / 'e.json')).results
    record = checkpoint.read_best(str(root / 'ckpt'))
    assert [(r.which, r.step) for r in results] == [('last', 8), ('best', record['step'])]
    direct, = evaluate.evaluate_checkpoints(record['checkpoint'], evaluate.EvalOptions(
        data_path=str(session_data)), out=quiet).results
    assert results[1].metrics.accuracy == direct.metrics.accuracy
    assert results[1].metrics.num_examples == 24                # the test set, not validation
    report = lines[-2]
    assert 'best: the checkpoint of the highest validation accuracy' in report
    assert 'temperature scaling, fitted on the 16 validation images' in report
    saved = json.loads((tmp_path / 'e.json').read_text())['checkpoints']
    assert [c['which'] for c in saved] == ['last', 'best']
    assert saved[0]['temperature_scaled']['validation_images'] == 16
    assert saved[1]['validation_accuracy'] == pytest.approx(record['validation_accuracy'])


def test_the_temperature_is_fitted_on_the_held_out_images(validated, session_data):
    """The last 16 training images as numpy reads them, through the evaluator's own logits:
    the temperature it reports is the one fitted to them."""
    root, _ = validated
    result, = evaluate.evaluate_checkpoints(str(root / 'ckpt' / 'ckpt-8'), evaluate.EvalOptions(
        data_path=str(session_data), temperature_scaling=True), out=quiet).results
    raw = np.fromfile(session_data / 'data_batch_5.bin', np.uint8).reshape(-1, 3073)[-16:]
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    net, saved = evaluate.load_network(str(root / 'ckpt' / 'ckpt-8'), out=quiet)
    logits = evaluate.Evaluator(net, saved.pixel_mean).logits(images).numpy()
    expected = calibration.fit_temperature(logits, raw[:, 0].astype(int))
    assert result.scaled.temperature == pytest.approx(expected, rel=1e-4)
    assert result.validation_images == 16


def test_without_a_validation_split_nothing_is_selected(trained, session_data):
    assert not (trained / 'ckpt' / checkpoint.BEST_FOLDER).exists()
    results = evaluate.evaluate_checkpoints(str(trained / 'ckpt'), evaluate.EvalOptions(
        data_path=str(session_data)), out=quiet).results
    assert [r.which for r in results] == ['last']


def test_temperature_scaling_is_refused_without_validation_images(trained, session_data):
    with pytest.raises(UserError, match='held out no validation images'):
        evaluate.evaluate_checkpoints(str(trained / 'ckpt'), evaluate.EvalOptions(
            data_path=str(session_data), temperature_scaling=True), out=quiet)


def test_a_damaged_best_record_is_one_line(tmp_path):
    (tmp_path / 'best').mkdir()
    (tmp_path / 'best' / 'best.json').write_text('{"step": 3')
    with pytest.raises(UserError, match='best.json: not a record of the best checkpoint'):
        checkpoint.read_best(str(tmp_path))


def test_the_evaluator_draws_the_reliability_diagram(validated, session_data, tmp_path):
    pytest.importorskip('matplotlib', reason='drawing needs the optional matplotlib')
    from v2.cli import app, evaluator, flags
    root, _ = validated
    png = tmp_path / 'r.png'
    status, line = app.call(evaluator.main, [
        'run_evaluator.py', '--data_path=%s' % session_data, '--ckpt_path=%s' % (root / 'ckpt'),
        '--temperature_scaling', '--reliability_png=%s' % png], flags.EVALUATOR)
    assert (status, line) == (0, '')
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_missing_matplotlib_is_one_line_before_anything_is_evaluated(trained, session_data,
                                                                       tmp_path, monkeypatch):
    from v2.cli import app, evaluator, flags
    monkeypatch.setitem(sys.modules, 'matplotlib', None)        # import matplotlib fails
    status, line = app.call(evaluator.main, [
        'run_evaluator.py', '--data_path=%s' % session_data, '--ckpt_path=%s' % (trained / 'ckpt'),
        '--reliability_png=%s' % (tmp_path / 'r.png'),
        '--output_json=%s' % (tmp_path / 'e.json')], flags.EVALUATOR)
    assert status == 1
    assert line.startswith('run_evaluator.py: error: the figures need matplotlib, which is not '
                           'installed: pip install matplotlib')
    assert not list(tmp_path.iterdir())
