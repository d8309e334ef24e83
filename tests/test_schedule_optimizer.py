"""The learning-rate schedule at its boundaries, and the momentum update."""

import numpy as np
import pytest
import tensorflow as tf

from v2.errors import UserError
from v2.optimizer import Momentum
from v2.schedule import Schedule


@pytest.mark.parametrize('step, rate', [(0, 0.1), (31999, 0.1), (32000, 0.01), (47999, 0.01),
                                        (48000, 0.001), (63999, 0.001)])
def test_paper_schedule_at_its_boundaries(step, rate):
    assert float(Schedule()(step)) == pytest.approx(rate)


@pytest.mark.parametrize('step, rate', [(0, 0.01), (399, 0.01), (400, 0.1), (32000, 0.01)])
def test_warmup_of_resnet110(step, rate):
    assert float(Schedule(warmup_iterations=400, warmup_lr=0.01)(step)) == pytest.approx(rate)


@pytest.mark.parametrize('boundaries, values, message', [
    ((48000, 32000), (0.1, 0.01, 0.001), 'strictly increasing'),
    ((100, 100), (0.1, 0.01, 0.001), 'strictly increasing'),
    ((32000,), (0.1, 0.01, 0.001), 'one value more'),
    ((32000,), (0.1, -0.01), 'positive'),
    ((32000,), (0.1, float('nan')), 'positive and finite'),
])
def test_bad_schedules_are_refused(boundaries, values, message):
    with pytest.raises(UserError, match=message):
        Schedule(boundaries=boundaries, values=values)


def test_momentum_update_matches_the_formula():
    var = tf.Variable([1.0, -2.0])
    opt = Momentum([var], momentum=0.9)
    grads = [np.array([0.5, 1.0]), np.array([-1.0, 2.0])]
    expected, accum = np.array([1.0, -2.0]), np.zeros(2)
    for g in grads:
        opt.apply([tf.constant(g, tf.float32)], [var], 0.1)
        accum = 0.9 * accum + g
        expected = expected - 0.1 * accum
    np.testing.assert_allclose(var.numpy(), expected, rtol=1e-6)
    np.testing.assert_allclose(opt.accumulators[0].numpy(), accum, rtol=1e-6)


@pytest.mark.parametrize('step, rate', [(0, 0.01), (200, 0.055), (399, 0.01 + 0.09 * 399 / 400),
                                        (400, 0.1), (32000, 0.01)])
def test_linear_warmup_rises_in_equal_steps_to_the_first_rate(step, rate):
    schedule = Schedule(warmup_iterations=400, warmup_lr=0.01, warmup='linear')
    assert float(schedule(step)) == pytest.approx(rate, rel=1e-6)
