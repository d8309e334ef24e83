"""Training and evaluation end to end on tiny generated data (a depth-8 net, a few steps)."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from v2 import checkpoint, evaluate, train
from v2.errors import UserError
from v2.model import ModelConfig
from v2.schedule import Schedule

TINY = ModelConfig(num_layers=8)


def config(tmp_path, **changes):
    settings = dict(ckpt_path=str(tmp_path / 'ckpt'), log_path=str(tmp_path / 'logs'),
                    batch_size=8, num_iterations=6, log_per_iterations=3,
                    schedule=Schedule(boundaries=(4,), values=(0.05, 0.005)))
    settings.update(changes)
    return train.TrainConfig(**settings)


def weights(ckpt_prefix):
    reader = tf.train.load_checkpoint(ckpt_prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith('model/')}


def folder_state(folder):
    return {name: open(os.path.join(folder, name), 'rb').read() for name in os.listdir(folder)
            if os.path.isfile(os.path.join(folder, name))}


def test_train_checkpoints_and_resumes_to_the_total(tiny_data, tmp_path):
    lines = []
    first = train.train(TINY, config(tmp_path), str(tiny_data), out=lines.append)
    assert first.step == 6 and first.checkpoint.endswith('ckpt-6')
    assert any(line.startswith('step 3/6  loss') for line in lines)
    assert sorted(p.rsplit('-', 1)[1] for p in checkpoint.find_all(str(tmp_path / 'ckpt'))) == \
        ['3', '6']
    lines.clear()
    second = train.train(TINY, config(tmp_path, num_iterations=9), str(tiny_data),
                         out=lines.append)
    assert any('resuming at step 6 from' in line for line in lines)
    assert second.step == 9
    assert checkpoint.Saved(second.checkpoint).step == 9
    # The optimizer's slots went into the checkpoint and came back.
    reader = tf.train.load_checkpoint(second.checkpoint)
    assert any(k.startswith('optimizer/accumulators') for k in reader.get_variable_to_shape_map())
    # Summaries were written for TensorBoard.
    assert os.listdir(tmp_path / 'logs' / 'train')


def test_interrupted_and_resumed_run_ends_with_the_same_weights(tiny_data, tmp_path):
    straight = train.train(TINY, config(tmp_path / 'a'), str(tiny_data), out=lambda s: None)
    train.train(TINY, config(tmp_path / 'b', num_iterations=3), str(tiny_data), out=lambda s: None)
    resumed = train.train(TINY, config(tmp_path / 'b'), str(tiny_data), out=lambda s: None)
    a, b = weights(straight.checkpoint), weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_resume_with_another_architecture_is_refused_and_nothing_is_touched(tiny_data, tmp_path):
    train.train(TINY, config(tmp_path), str(tiny_data), out=lambda s: None)
    before = folder_state(tmp_path / 'ckpt')
    with pytest.raises(UserError, match=r'ResNet-8 checkpoint .* flags ask for plain-8'):
        train.train(ModelConfig(num_layers=8, shortcut_connections=False),
                    config(tmp_path, num_iterations=9), str(tiny_data), out=lambda s: None)
    assert folder_state(tmp_path / 'ckpt') == before


def test_changed_schedule_on_resume_is_said_in_one_line(tiny_data, tmp_path):
    train.train(TINY, config(tmp_path), str(tiny_data), out=lambda s: None)
    lines = []
    train.train(TINY, config(tmp_path, num_iterations=7, weight_decay=5e-4), str(tiny_data),
                out=lines.append)
    notes = [line for line in lines if line.startswith('note:')]
    assert len(notes) == 1 and 'weight_decay 0.0001 -> 0.0005' in notes[0]


def test_non_finite_loss_stops_without_writing_a_checkpoint(tiny_data, tmp_path):
    bad = config(tmp_path, schedule=Schedule(boundaries=(), values=(1e30,)))
    with pytest.raises(UserError, match=r'the loss became (nan|inf) at step \d'):
        train.train(TINY, bad, str(tiny_data), out=lambda s: None)
    assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')) is None


def test_evaluate_every_checkpoint_of_a_folder(tiny_data, tmp_path):
    train.train(TINY, config(tmp_path), str(tiny_data), out=lambda s: None)
    lines = []
    out_json = tmp_path / 'eval.json'
    results = evaluate.evaluate_checkpoints(
        str(tmp_path / 'ckpt'), str(tiny_data), {}, all_checkpoints=True,
        batch_size=10, output_json=str(out_json), out=lines.append)
    assert [step for _, step, _ in results] == [3, 6]
    for _, _, metrics in results:
        assert metrics.num_examples == 24
        assert 0 <= metrics.accuracy <= 1 and metrics.cross_entropy > 0
        assert np.array(metrics.confusion).sum() == 24
    report = json.loads(out_json.read_text())
    assert report['model'] == 'ResNet-8' and len(report['checkpoints']) == 2
    assert report['checkpoints'][1]['error'] == pytest.approx(1 - results[1][2].accuracy)
    assert 'per class' in '\n'.join(lines)


def test_evaluation_reuses_one_trace_across_batches_and_checkpoints(tiny_data, tmp_path):
    train.train(TINY, config(tmp_path), str(tiny_data), out=lambda s: None)
    calls = []
    original = evaluate.Evaluator.__call__

    def spy(self, batches):
        calls.append(self)
        return original(self, batches)
    evaluate.Evaluator.__call__ = spy
    try:
        evaluate.evaluate_checkpoints(str(tmp_path / 'ckpt'), str(tiny_data), {},
                                      all_checkpoints=True, batch_size=7, out=lambda s: None)
    finally:
        evaluate.Evaluator.__call__ = original
    assert len(calls) == 2 and calls[0] is calls[1]
    assert calls[0].traces == 1            # batches of 7, 7, 7 and 3, two checkpoints


def test_evaluation_refuses_an_explicit_architecture_that_differs(tiny_data, tmp_path):
    train.train(TINY, config(tmp_path), str(tiny_data), out=lambda s: None)
    with pytest.raises(UserError, match=r'ResNet-8 checkpoint \(num_layers=8\), but the flags '
                                        r'ask for ResNet-20 \(num_layers=20\)'):
        evaluate.evaluate_checkpoints(str(tmp_path / 'ckpt'), str(tiny_data),
                                      {'num_layers': 20}, out=lambda s: None)


KINDS = [ModelConfig(num_layers=8, resnet_version=1),
         ModelConfig(num_layers=11, bottleneck=True),
         ModelConfig(num_layers=11, bottleneck=True, resnet_version=1, shortcut_type='C'),
         ModelConfig(num_layers=8, shortcut_type='A_subsample', shortcut_connections=True),
         ModelConfig(num_layers=11, bottleneck=True, shortcut_connections=False),
         ModelConfig('wide_resnet', 10, widen_factor=2, dropout_rate=0.3),
         ModelConfig('vgg', 11),
         ModelConfig('imagenet_resnet', 18, resnet_version=2)]


@pytest.mark.parametrize('kind', KINDS, ids=[k.slug() + '-' + str(k.shortcut_type) for k in KINDS])
def test_a_few_steps_of_every_kind_train_and_evaluate(tiny_data, tmp_path, kind):
    result = train.train(kind, config(tmp_path, batch_size=4, num_iterations=2,
                                      log_per_iterations=2), str(tiny_data), out=lambda s: None)
    assert result.step == 2 and np.isfinite(result.last_metrics['loss'])
    (_, step, metrics), = evaluate.evaluate_checkpoints(str(tmp_path / 'ckpt'), str(tiny_data),
                                                        {}, batch_size=12, out=lambda s: None)
    assert step == 2 and metrics.num_examples == 24


def test_a_checkpoint_of_one_kind_is_refused_as_another(tiny_data, tmp_path):
    wide = ModelConfig('wide_resnet', 10, widen_factor=2)
    train.train(wide, config(tmp_path, num_iterations=1), str(tiny_data), out=lambda s: None)
    with pytest.raises(UserError, match=r'is a WRN-10-2 checkpoint \(model=wide_resnet\), but '
                                        r'the flags ask for model=resnet$'):
        evaluate.evaluate_checkpoints(str(tmp_path / 'ckpt'), str(tiny_data),
                                      {'model': 'resnet'}, out=lambda s: None)
    with pytest.raises(UserError, match=r'WRN-10-2 checkpoint \(widen_factor=2\), but the flags '
                                        r'ask for WRN-10-4'):
        evaluate.evaluate_checkpoints(str(tmp_path / 'ckpt'), str(tiny_data),
                                      {'widen_factor': 4}, out=lambda s: None)
    with pytest.raises(UserError, match=r'WRN-10-2 checkpoint .* flags ask for VGG-11'):
        train.train(ModelConfig('vgg', 11), config(tmp_path, num_iterations=2), str(tiny_data),
                    out=lambda s: None)


def test_training_on_real_images_lowers_the_loss(real_data, tmp_path):
    settings = config(tmp_path, batch_size=64, num_iterations=60, log_per_iterations=20,
                      schedule=Schedule(boundaries=(), values=(0.1,)))
    lines = []
    train.train(TINY, settings, str(real_data), out=lines.append)
    losses = [float(line.split('loss ')[1].split()[0]) for line in lines
              if line.startswith('step ') and 'loss' in line]
    assert len(losses) == 3
    assert losses[-1] < losses[0] - 0.1, losses


def test_report_gives_precision_recall_and_the_confusion_matrix_and_tensorboard(tiny_data,
                                                                                 tmp_path):
    train.train(TINY, config(tmp_path), str(tiny_data), out=lambda s: None)
    lines = []
    results = evaluate.evaluate_checkpoints(str(tmp_path / 'ckpt'), str(tiny_data), {},
                                            all_checkpoints=True, out=lines.append,
                                            log_path=str(tmp_path / 'logs'))
    text = '\n'.join(lines)
    metrics = results[-1][2]
    confusion = np.array(metrics.confusion)
    assert 'precision' in text and 'confusion matrix' in text
    assert confusion.shape == (10, 10) and confusion.sum() == 24
    predicted = confusion.sum(axis=0)
    for k in range(10):
        expected = confusion[k, k] / predicted[k] if predicted[k] else 0.0
        assert metrics.per_class_precision[k] == pytest.approx(expected)
    assert os.listdir(tmp_path / 'logs' / 'evaluator')
