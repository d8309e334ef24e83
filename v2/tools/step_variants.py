"""Other ways to run the memory-bound part of the step, each timed against the trainer's own.

  python -m v2.tools.step_variants --num_layers=20 --precision=bfloat16
  python -m v2.tools.step_variants --num_layers=110 --precision=bfloat16 --rounds=3

Part of a CPU step is not convolution (v2.tools.benchmark's conv-only bound says how
much: 11-14% on a 2-core AMD EPYC, about a third on an Intel CPU with AMX): batch norm
forward and backward, the ReLU and its gradient, the residual additions. TensorFlow
runs each as its own kernel, each a pass over memory. This tool times the same
traced step (the trainer's own state and step, fed one in-memory uint8 batch that it
prepares itself, as on a GPU; every setting of the recipe) with batch norm
and ReLU done other ways, alternating the variants within one process so that
they share the machine's state, and prints each one's images/second against the
trainer's. Variants that need another process (TensorFlow's oneDNN switches, read at
start-up, and grappler's remapper and layout optimizer) run as subprocesses, alternated
the same way.

What each did is in docs/performance.md; none is used by the trainer unless it was
measured faster there.
"""

import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf

from v2.cli import app
from v2.errors import UserError
from v2.nets import layers
from v2.tools import flags
from v2.training import loop
from v2.training.options import RunOptions
from v2.training.state import TrainState

FLAGS = flags.FLAGS
EPSILON = layers.BN_EPSILON


@tf.function(jit_compile=True)
def _xla_bn_relu(x, gamma, beta):
    """Training-mode BN -> ReLU as one XLA computation; its gradient is compiled with it."""
    x32 = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(x32, [0, 1, 2])
    variance = tf.maximum(tf.reduce_mean(tf.square(x32), [0, 1, 2]) - tf.square(mean), 0.0)
    y = tf.nn.relu((x32 - mean) * (gamma * tf.math.rsqrt(variance + EPSILON)) + beta)
    return tf.cast(y, x.dtype), mean, variance


class XlaBatchNorm(layers.BatchNorm):
    """Variant 'xla': BN -> ReLU in training compiled by XLA, statistics in one pass; the
    convolutions around it stay on oneDNN."""

    def with_relu(self, x, training):
        if not training:
            return super().with_relu(x, training)
        y, mean, variance = _xla_bn_relu(x, self.gamma, self.beta)
        _update_averages(self, x, mean, variance)
        return y


def _update_averages(bn, x, mean, variance):
    n = tf.cast(tf.size(x) // tf.shape(x)[-1], tf.float32)
    factor = 1.0 - bn.momentum
    bn.moving_mean.assign((1 - factor) * bn.moving_mean + factor * mean)
    bn.moving_variance.assign((1 - factor) * bn.moving_variance
                              + factor * variance * n / tf.maximum(n - 1.0, 1.0))


@tf.function(jit_compile=True)
def _forward(x, gamma, beta):
    x32 = tf.cast(x, tf.float32)
    mean = tf.reduce_mean(x32, [0, 1, 2])
    variance = tf.maximum(tf.reduce_mean(tf.square(x32), [0, 1, 2]) - tf.square(mean), 0.0)
    rstd = tf.math.rsqrt(variance + EPSILON)
    normalised = (x32 - mean) * rstd
    y = tf.nn.relu(normalised * gamma + beta)
    return tf.cast(y, x.dtype), tf.cast(normalised, x.dtype), mean, variance, rstd


@tf.function(jit_compile=True)
def _backward(dy, normalised, gamma, beta, rstd):
    """The gradient of ReLU(gamma * x_hat + beta) as one expression: Ioffe & Szegedy 2015."""
    x_hat = tf.cast(normalised, tf.float32)
    g = tf.where(x_hat * gamma + beta > 0, tf.cast(dy, tf.float32), 0.0)
    d_beta = tf.reduce_sum(g, [0, 1, 2])
    d_gamma = tf.reduce_sum(g * x_hat, [0, 1, 2])
    n = tf.cast(tf.size(g) // tf.shape(g)[-1], tf.float32)
    dx = (gamma * rstd) * (g - d_beta / n - x_hat * d_gamma / n)
    return tf.cast(dx, dy.dtype), d_gamma, d_beta


@tf.custom_gradient
def _bn_relu_custom(x, gamma, beta):
    y, normalised, mean, variance, rstd = _forward(x, gamma, beta)

    def grad(dy, d_mean, d_variance):
        return _backward(dy, normalised, gamma, beta, rstd)
    return (y, mean, variance), grad


class CustomGradientBatchNorm(layers.BatchNorm):
    """Variant 'custom_gradient': BN -> ReLU with a hand-written backward, both compiled by
    XLA; it keeps only the normalised input for the backward (ReLU's mask is recomputed)."""

    def with_relu(self, x, training):
        if not training:
            return super().with_relu(x, training)
        y, mean, variance = _bn_relu_custom(x, tf.identity(self.gamma), tf.identity(self.beta))
        _update_averages(self, x, mean, variance)
        return y


IN_PROCESS = {'trainer': layers.BatchNorm, 'xla': XlaBatchNorm,
              'custom_gradient': CustomGradientBatchNorm}
# Variants read by TensorFlow at start-up: (environment, grappler options).
IN_SUBPROCESS = {
    'no_onednn': ({'TF_ENABLE_ONEDNN_OPTS': '0'}, {}),
    'no_remapper': ({}, {'remapping': False}),
    # The trainer's choice is the device's (off on CPUs with AMX, else on): both, against it.
    'layout_optimizer_on': ({}, {'layout_optimizer': True}),
    'layout_optimizer_off': ({}, {'layout_optimizer': False}),
}


def step_timer(config, recipe, dtype, norm_class):
    """A function timing windows of the trainer's traced step (its state and step, with batch
    norm -> ReLU done by norm_class) on one in-memory uint8 batch; traced once here, so that
    the rounds alternate the variants without tracing them again."""
    strategy = tf.distribute.get_strategy()
    state = TrainState.create(config, recipe, strategy=strategy, dtype=dtype,
                              mean=np.zeros([32, 32, 3], np.float32), norm_class=norm_class)
    train_steps = state.train_steps()
    read_window = state.window_reader()
    batch_size = recipe.batch_size
    images = tf.cast(tf.random.uniform([batch_size, 32, 32, 3], 0, 256, tf.int32), tf.uint8)
    labels = tf.random.uniform([batch_size], 0, config.num_classes, tf.int32)
    batches = iter(tf.data.Dataset.from_tensors((images, labels)).repeat())
    train_steps(batches, tf.constant(3, tf.int32))
    read_window()

    def time_windows(steps, windows):
        """Images/second of each window of `steps` steps."""
        rates = []
        for _ in range(windows):
            start = time.perf_counter()
            train_steps(batches, tf.constant(steps, tf.int32))
            read_window()                                   # waits for the device
            rates.append(steps * batch_size / (time.perf_counter() - start))
        return rates
    return time_windows


def subprocess_rates(name, argv):
    environment, options = IN_SUBPROCESS[name]
    env = dict(os.environ, **environment, V2_GRAPPLER=json.dumps(options))
    run = subprocess.run([sys.executable, '-m', 'v2.tools.step_variants', *argv[1:],
                          '--variants=trainer', '--rounds=1', '--machine_readable'],
                         env=env, capture_output=True, text=True, timeout=3600)
    if run.returncode:
        raise RuntimeError('%s failed: %s' % (name, run.stderr[-2000:]))
    return [float(v) for v in run.stdout.split('rates:')[1].split()]


def main(argv):
    names = list(FLAGS.variants) or list(IN_PROCESS) + list(IN_SUBPROCESS)
    unknown = [n for n in names if n not in IN_PROCESS and n not in IN_SUBPROCESS]
    if unknown:
        raise UserError('variants=%s: expected some of %s'
                        % (','.join(unknown), ','.join([*IN_PROCESS, *IN_SUBPROCESS])),
                        settings=('variants',))
    config = flags.model_config()
    recipe = flags.recipe()
    # The trainer's own set-up: its devices, compute dtype and grappler options
    # (v2.training.loop.set_up); a subprocess variant then changes its one option.
    dtype = loop.set_up(config, recipe, RunOptions(ckpt_path='', devices=tuple(FLAGS.devices),
                                                   tf32=FLAGS.tf32,
                                                   layout_optimizer=FLAGS.layout_optimizer),
                        print).dtype
    if os.environ.get('V2_GRAPPLER'):
        tf.config.optimizer.set_experimental_options(json.loads(os.environ['V2_GRAPPLER']))
    timers = {name: step_timer(config, recipe, dtype, IN_PROCESS[name])
              for name in names if name in IN_PROCESS}
    rates = {name: [] for name in names}
    for _ in range(FLAGS.rounds):
        for name in names:
            if name in IN_PROCESS:
                rates[name] += timers[name](FLAGS.window_steps, FLAGS.windows)
            else:
                rates[name] += subprocess_rates(name, sys.argv)
    if FLAGS.machine_readable:
        print('rates: ' + ' '.join('%.1f' % r for r in rates[names[0]]))
        return 0
    base = statistics.median(rates['trainer']) if 'trainer' in rates else None
    print('%s, batch %d, %s; %d rounds of %d windows of %d steps, variants alternated'
          % (config.describe(), recipe.batch_size, dtype.name, FLAGS.rounds, FLAGS.windows,
             FLAGS.window_steps))
    for name in names:
        median = statistics.median(rates[name])
        print('%-22s %7.0f img/s  (min %.0f, max %.0f)%s'
              % (name, median, min(rates[name]), max(rates[name]),
                 '   %.2fx the trainer' % (median / base) if base else ''))
    return 0


def run():
    app.run(main, flags.STEP_VARIANTS)


if __name__ == '__main__':
    run()
