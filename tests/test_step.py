"""The training step's numbers: the loss, the rate it applies, the sums it keeps, the averages."""

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf

from v2.data import pipeline
from v2.nets import layers, model
from v2.runtime.ema import WeightAverage
from v2.training.optimizer import Momentum
from v2.training.schedule import Schedule
from v2.training.step import StepParts, Window, WindowReader, make_train_steps


def _parts(net, **changes):
    settings = dict(model=net, optimizer=Momentum(net.trainable_variables), step=tf.Variable(
        0, dtype=tf.int64), window=Window(), pixel_mean=tf.Variable(tf.fill([32, 32, 3], 100.0)),
        schedule=Schedule(boundaries=(), values=(0.05,)), weight_decay=1e-3, seed=3)
    settings.update(changes)
    return StepParts(**settings)


def _batch(size=8, seed=0):
    rng = np.random.default_rng(seed)
    return (tf.constant(rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)),
            tf.constant(rng.integers(0, 10, size), tf.int32))


def _sums(parts):
    return WindowReader(parts.window, tf.distribute.get_strategy())()


@pytest.mark.parametrize('smoothing', [0.0, 0.2])
def test_loss_is_cross_entropy_plus_half_the_decayed_squared_weights(smoothing):
    net = model.cifar_resnet(8)
    parts = _parts(net, label_smoothing=smoothing)
    images, labels = _batch()
    ready = pipeline.prepare_batch(images, parts.pixel_mean, pipeline.step_key(3, 0))
    logits = net(ready, training=True).numpy()              # what the step's forward sees
    cross_entropy = ref.softmax_cross_entropy(logits, labels.numpy(), smoothing).mean()
    l2 = 1e-3 * sum((w.numpy().astype(np.float64) ** 2).sum() / 2
                    for w in model.decayed_weights(net))
    accuracy = np.mean(logits.argmax(-1) == labels.numpy())
    make_train_steps(parts)(iter([(images, labels)]), tf.constant(1, tf.int64))
    sums = _sums(parts)
    assert sums['updated'] == 1 and sums['skipped'] == 0 and sums['first_bad'] == -1
    assert sums['cross_entropy'] == pytest.approx(cross_entropy, rel=1e-4)
    assert sums['l2_loss'] == pytest.approx(l2, rel=1e-4)
    assert sums['loss'] == pytest.approx(cross_entropy + l2, rel=1e-4)
    assert sums['accuracy'] == pytest.approx(accuracy)
    assert sums['learning_rate'] == pytest.approx(0.05)
    assert int(parts.step.numpy()) == 1


class Linear(tf.Module):
    """A linear classifier of the pixels: the smallest net the step can train."""

    def __init__(self):
        super().__init__(name='linear')
        self.config = model.ModelConfig(num_layers=8)
        self.fc = layers.Dense(32 * 32 * 3, 10, tf.random.Generator.from_seed(0), 'fc')

    def __call__(self, images, training=False):
        return self.fc(tf.reshape(images, [tf.shape(images)[0], -1]))


@pytest.mark.parametrize('nesterov', [False, True])
def test_each_step_applies_the_schedules_rate_of_its_own_step(nesterov):
    net = Linear()
    optimizer = Momentum(net.trainable_variables, 0.9, nesterov)
    schedule = Schedule(boundaries=(2, 4), values=(0.4, 0.04, 0.004), warmup_iterations=1,
                        warmup_lr=0.1)
    parts = _parts(net, optimizer=optimizer, schedule=schedule, weight_decay=0.0)
    steps = make_train_steps(parts)
    data = iter([_batch(8, seed) for seed in range(6)])
    slot = optimizer.accumulators[[v.ref() for v in net.trainable_variables].index(
        net.fc.kernel.ref())]
    applied = []
    for _ in range(6):
        kernel, accum = net.fc.kernel.numpy(), slot.numpy()
        steps(data, tf.constant(1, tf.int64))
        new_accum = slot.numpy()
        grad = new_accum - 0.9 * accum
        direction = grad + 0.9 * new_accum if nesterov else new_accum
        big = np.abs(direction) > 1e-3
        applied.append(np.median((kernel - net.fc.kernel.numpy())[big] / direction[big]))
    np.testing.assert_allclose(applied, [0.1, 0.4, 0.04, 0.04, 0.004, 0.004], rtol=1e-3)


def test_the_window_sums_steps_and_reads_once():
    net = model.cifar_resnet(8)
    parts = _parts(net)
    steps = make_train_steps(parts)
    data = iter([_batch(8, seed) for seed in range(3)])
    assert steps(data, tf.constant(3, tf.int64)) is None      # nothing comes back per call
    sums = _sums(parts)
    assert sums['updated'] == 3 and sums['learning_rate'] == pytest.approx(0.15)
    assert int(parts.step.numpy()) == 3
    again = _sums(parts)                                       # the read reset the sums
    assert again['updated'] == 0 and again['loss'] == 0 and again['first_bad'] == -1


def test_a_non_finite_gradient_skips_the_whole_step_under_skip_step():
    net = model.cifar_resnet(8)
    images, labels = _batch()
    average = WeightAverage(net, 0.9)
    parts = _parts(net, nan_policy='skip_step', ema=average,
                   pixel_mean=tf.Variable(tf.fill([32, 32, 3], float('nan'))))
    kept = list(net.variables) + list(parts.optimizer.variables) + list(average.averages)
    before = [v.numpy().copy() for v in kept]       # weights, statistics, momentum, averages
    make_train_steps(parts)(iter([(images, labels)]), tf.constant(1, tf.int64))
    sums = _sums(parts)
    assert sums['skipped'] == 1 and sums['updated'] == 0 and sums['first_bad'] == -1
    for b, v in zip(before, kept):
        np.testing.assert_array_equal(b, v.numpy(), err_msg=v.name)
    assert int(parts.step.numpy()) == 1                    # the step still counts


def test_the_first_step_with_a_non_finite_loss_is_marked_under_stop():
    net = model.cifar_resnet(8)
    parts = _parts(net, schedule=Schedule(boundaries=(), values=(1e30,)))
    make_train_steps(parts)(iter([_batch(8, seed) for seed in range(4)]),
                            tf.constant(4, tf.int64))
    sums = _sums(parts)
    assert sums['updated'] == 4 and 1 <= sums['first_bad'] <= 3
    assert not np.isfinite(sums['loss'])


def test_weight_averages_follow_their_formula():
    net = model.cifar_resnet(8)
    average = WeightAverage(net, decay=0.9)
    kernel = net.stem.kernel
    expected = kernel.numpy().astype(np.float64)
    for t in range(4):
        kernel.assign(kernel + 0.5)
        average.update(net, tf.constant(t, tf.int64))
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * kernel.numpy()
    stem_average = average.averages[[v.ref() for v in net.variables].index(kernel.ref())]
    np.testing.assert_allclose(stem_average.numpy(), expected, rtol=1e-5, atol=1e-6)
    copy = model.cifar_resnet(8, seed=5)
    average.copy_to(copy)
    np.testing.assert_allclose(copy.stem.kernel.numpy(), expected, rtol=1e-5, atol=1e-6)
