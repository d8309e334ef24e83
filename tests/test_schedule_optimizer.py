"""The learning-rate schedules at their boundaries, and the momentum updates."""

import math

import numpy as np
import pytest
import tensorflow as tf

from v2.errors import UserError
from v2.training.optimizer import Momentum
from v2.training.schedule import Schedule


@pytest.mark.parametrize('step, rate', [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01),
                                        (48000, 0.001), (63999, 0.001)])
def test_paper_schedule_at_its_boundaries(step, rate):
    assert float(Schedule()(step)) == pytest.approx(rate)


@pytest.mark.parametrize('step, rate', [(0, 0.01), (399, 0.01), (400, 0.1), (32000, 0.01)])
def test_constant_warmup_of_resnet110(step, rate):
    assert float(Schedule(warmup_iterations=400, warmup_lr=0.01)(step)) == pytest.approx(rate)


@pytest.mark.parametrize('step, rate', [(0, 0.01), (200, 0.055), (399, 0.01 + 0.09 * 399 / 400),
                                        (400, 0.1), (32000, 0.01)])
def test_linear_warmup_rises_in_equal_steps_to_the_first_rate(step, rate):
    schedule = Schedule(warmup_iterations=400, warmup_lr=0.01, warmup='linear')
    assert float(schedule(step)) == pytest.approx(rate, rel=1e-6)


@pytest.mark.parametrize('step', [0, 50, 100, 300, 550, 1000, 1200])
def test_cosine_decay_after_a_linear_warmup(step):
    schedule = Schedule(values=(0.2,), boundaries=(), warmup_iterations=100, warmup_lr=0.0,
                        warmup='linear', decay='cosine', cosine_steps=1000)
    expected = (0.2 * step / 100 if step < 100 else
                0.2 * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - 100) / 900))))
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-7)


@pytest.mark.parametrize('changes, message', [
    (dict(boundaries=(48000, 32000)), 'strictly increasing'),
    (dict(boundaries=(100, 100)), 'strictly increasing'),
    (dict(boundaries=(32000,)), 'one value more'),
    (dict(boundaries=(32000,), values=(0.1, -0.01)), 'positive'),
    (dict(boundaries=(32000,), values=(0.1, float('nan'))), 'positive and finite'),
    (dict(warmup='sudden'), 'warmup=sudden'),
    (dict(decay='cosine', cosine_steps=10, warmup_iterations=20), 'needs more steps'),
])
def test_bad_schedules_are_refused(changes, message):
    with pytest.raises(UserError, match=message):
        Schedule(**changes)


def _run(optimizer, var, grads, rates, finite=None):
    for g, lr in zip(grads, rates):
        optimizer.apply([tf.constant(g, tf.float32)], [var], lr,
                        None if finite is None else tf.constant(finite))


@pytest.mark.parametrize('nesterov', [False, True])
def test_momentum_update_matches_the_formula(nesterov):
    var = tf.Variable([1.0, -2.0, 0.5])
    grads = [np.array([0.5, 1.0, -1.0]), np.array([-1.0, 2.0, 0.25]), np.array([0.1, 0.1, 3.0])]
    rates = [0.1, 0.1, 0.01]
    _run(Momentum([var], momentum=0.9, nesterov=nesterov), var, grads, rates)
    expected, accum = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for g, lr in zip(grads, rates):
        accum = 0.9 * accum + g
        # Nesterov (Sutskever et al. 2013, as TensorFlow's kernel): var -= lr * (g + m * accum)
        expected = expected - lr * (g + 0.9 * accum if nesterov else accum)
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize('nesterov', [False, True])
def test_a_skipped_update_changes_neither_weights_nor_momentum(nesterov):
    var = tf.Variable([1.0, -2.0])
    optimizer = Momentum([var], momentum=0.9, nesterov=nesterov)
    _run(optimizer, var, [np.array([0.5, 1.0])], [0.1])
    before = var.numpy().copy(), optimizer.accumulators[0].numpy().copy()
    _run(optimizer, var, [np.array([np.nan, np.inf])], [0.1], finite=False)
    np.testing.assert_array_equal(var.numpy(), before[0])
    np.testing.assert_array_equal(optimizer.accumulators[0].numpy(), before[1])
    _run(optimizer, var, [np.array([0.5, 1.0])], [0.1], finite=True)
    assert not np.array_equal(var.numpy(), before[0])
