"""Mixed precision: bfloat16 and float16 steps, the dynamic loss scale, the CPU fallback."""

import numpy as np
import tensorflow as tf

from v2 import model, precision, train
from v2.optimizer import Momentum
from v2.schedule import Schedule

TINY = model.ModelConfig(num_layers=8)


def _step(dtype, loss_scale=None):
    net = model.build(TINY, compute_dtype=dtype)
    optimizer = Momentum(net.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    fn = train.make_train_step(net, optimizer, Schedule(boundaries=(), values=(0.05,)), step,
                               1e-4, loss_scale)
    images = tf.random.stateless_normal([4, 32, 32, 3], seed=[1, 2])
    labels = tf.constant([0, 1, 2, 3])
    return net, fn, images, labels


def test_bfloat16_step_keeps_float32_variables_and_learns():
    net, fn, images, labels = _step(tf.bfloat16)
    assert net(images).dtype == tf.float32                    # logits come back float32
    before = [v.numpy().copy() for v in net.trainable_variables]
    losses = [float(fn(images, labels)['loss']) for _ in range(8)]
    assert all(v.dtype == tf.float32 for v in net.variables)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables))


def test_float16_overflow_skips_the_step_and_lowers_the_scale():
    scale = precision.DynamicLossScale(initial=2.0 ** 40)     # overflows float16 gradients
    net, fn, images, labels = _step(tf.float16, scale)
    before = [v.numpy().copy() for v in net.trainable_variables]
    metrics = fn(images, labels)
    assert float(metrics['loss_scale']) == 2.0 ** 39
    for b, v in zip(before, net.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())          # the update was skipped
    for _ in range(30):                                      # it keeps halving until finite
        metrics = fn(images, labels)
    assert float(metrics['loss_scale']) < 2.0 ** 20
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables))


def test_loss_scale_grows_after_enough_finite_steps():
    scale = precision.DynamicLossScale(initial=8.0, growth_interval=2)
    values = []
    for finite in (True, True, True, False, True, True):
        scale.update(tf.constant(finite))
        values.append(float(scale.scale))
    assert values == [8.0, 16.0, 16.0, 8.0, 8.0, 16.0]


def test_float16_training_run_checkpoints_the_loss_scale(tiny_data, tmp_path):
    config = train.TrainConfig(ckpt_path=str(tmp_path / 'ckpt'), log_path=str(tmp_path / 'logs'),
                               batch_size=2, num_iterations=2, log_per_iterations=2,
                               precision='float16')
    result = train.train(TINY, config, str(tiny_data), out=lambda s: None)
    assert 'loss_scale' in result.last_metrics
    reader = tf.train.load_checkpoint(result.checkpoint)
    assert 'loss_scale/scale/.ATTRIBUTES/VARIABLE_VALUE' in reader.get_variable_to_shape_map()


def test_bfloat16_falls_back_with_a_warning_without_bf16_units(monkeypatch):
    monkeypatch.setattr(precision, 'cpu_has_bf16', lambda: False)
    monkeypatch.setattr(tf.config, 'list_physical_devices', lambda kind=None: [])
    warnings = []
    assert precision.compute_dtype('bfloat16', warn=warnings.append) == tf.float32
    assert len(warnings) == 1 and 'no bfloat16 units' in warnings[0]
    assert precision.compute_dtype('float16') == tf.float16
