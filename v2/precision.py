"""Compute precision: float32, bfloat16 (CPUs with bf16 units, TPUs, GPUs) or float16 (GPUs).

Variables, batch-norm statistics and the loss stay float32 in every case; only the
activations and the convolutions' inputs run in the lower precision. float16 has a
narrow range, so its gradients are computed on a dynamically scaled loss
(Micikevicius et al. 2018, "Mixed Precision Training"); bfloat16 has float32's
range and needs no scaling.
"""

import sys

import tensorflow as tf

PRECISIONS = ('float32', 'bfloat16', 'float16')


def cpu_has_bf16():
    """True if this CPU has bfloat16 arithmetic (AVX512-BF16 or AMX-BF16), read from Linux."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read()
    except OSError:
        return False
    return 'avx512_bf16' in flags or 'amx_bf16' in flags


def compute_dtype(precision, warn=None):
    """The dtype of the activations for --precision; bfloat16 falls back where it is slow."""
    if precision == 'bfloat16' and not tf.config.list_physical_devices('GPU') \
            and not cpu_has_bf16():
        (warn or (lambda m: sys.stderr.write(m + '\n')))(
            'warning: --precision=bfloat16: this CPU has no bfloat16 units (no avx512_bf16 or '
            'amx_bf16), where it is slower than float32; training in float32 instead')
        return tf.float32
    return tf.as_dtype(precision)


class DynamicLossScale(tf.Module):
    """A loss scale that doubles after `growth_interval` finite steps and halves on overflow.

    Its two variables are saved in checkpoints, so a resumed run scales as an
    uninterrupted one would.
    """

    def __init__(self, initial=2.0 ** 15, growth_interval=2000, name='loss_scale'):
        super().__init__(name=name)
        self.growth_interval = growth_interval
        # Every replica computes the same update (from all-reduced gradients); under a
        # tf.distribute strategy the first replica's is kept.
        shared = dict(trainable=False, aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        with self.name_scope:
            self.scale = tf.Variable(initial, dtype=tf.float32, name='scale', **shared)
            self.good_steps = tf.Variable(0, dtype=tf.int64, name='good_steps', **shared)

    def update(self, finite):
        """Adapts the scale to whether this step's gradients were all finite."""
        grow = tf.logical_and(finite, self.good_steps + 1 >= self.growth_interval)
        new_scale = tf.where(finite, tf.where(grow, self.scale * 2.0, self.scale),
                             tf.maximum(self.scale / 2.0, 1.0))
        self.good_steps.assign(tf.where(finite, tf.where(grow, tf.constant(0, tf.int64),
                                                         self.good_steps + 1),
                                        tf.constant(0, tf.int64)))
        self.scale.assign(new_scale)
