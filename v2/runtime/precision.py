"""Compute precision: float32, bfloat16 (CPUs with bf16 units, recent GPUs) or float16 (GPUs).

Variables, batch-norm statistics and the loss stay float32 in every case; only the
activations and the convolutions' inputs run in the lower precision. float16 has a
narrow range, so its gradients are computed on a dynamically scaled loss
(Micikevicius et al. 2018, "Mixed Precision Training"); bfloat16 has float32's
range and needs no scaling.
"""

from collections.abc import Callable, Sequence

import tensorflow as tf

from v2.runtime import devices as devices_lib
from v2.runtime.distribution import local_assign

PRECISIONS = ('float32', 'bfloat16', 'float16')


def compute_dtype(precision: str, used: Sequence[devices_lib.Device] | None = None,
                  warn: Callable | None = None) -> tf.DType:
    """The dtype of the activations for `precision` on these devices (default: this machine's).

    bfloat16 is fast on GPUs of compute capability 8.0 (Ampere) and later and on CPUs
    with bfloat16 units; float16 needs the tensor cores of 7.0 (Volta) and later.
    Elsewhere TensorFlow emulates them, slower than float32, so the run says so and
    computes in float32. float16 on a CPU is kept, with a warning: it is the only
    way to try the GPU's loss-scaled path without one.
    """
    warn = warn or devices_lib.warn_to_stderr
    if used is None:
        used = devices_lib.describe(tf.config.list_physical_devices('GPU'))
    if precision == 'float32':
        return tf.float32
    gpus = [d for d in used if d.kind == 'GPU']
    needed = {'bfloat16': (8, 0), 'float16': (7, 0)}[precision]
    if gpus:
        slow = [d for d in gpus if tuple(d.compute_capability or (0, 0)) < needed]
        if slow:
            warn('warning: precision=%s needs compute capability %d.%d or later for speed, and '
                 '%s has %s; training in float32 instead'
                 % (precision, needed[0], needed[1], slow[0].description,
                    '.'.join(map(str, slow[0].compute_capability or ('unknown',)))))
            return tf.float32
        return tf.as_dtype(precision)
    if precision == 'bfloat16' and not any(d.has_bf16 for d in used):
        warn('warning: precision=bfloat16: this CPU has no bfloat16 units (no avx512_bf16 or '
             'amx_bf16), where it is slower than float32; training in float32 instead')
        return tf.float32
    if precision == 'float16':
        warn('warning: precision=float16 on a CPU is emulated and slow; it is meant for GPUs')
    return tf.as_dtype(precision)



# Measured with v2.tools.benchmark (docs/performance.md, "On a CPU"): ResNet-20, batch 128, on
# a 2-core AMD EPYC with AVX512-BF16, images/s in bfloat16 and float32, the first round.
CPU_BF16_MEASURED = ('ResNet-20', 1061, 674, '2-core AMD EPYC with AVX512-BF16')


def faster_hint(precision: str, dtype: tf.DType, used: Sequence[devices_lib.Device]) -> str | None:
    """One line for a float32 run on devices with bfloat16 units: what bfloat16 would give."""
    if precision != 'float32' or dtype != tf.float32 or not used:
        return None
    gpus = [d for d in used if d.kind == 'GPU']
    if gpus and all(tuple(d.compute_capability or (0, 0)) >= (8, 0) for d in gpus):
        return ('note: this runs in float32 on a GPU with bfloat16 tensor cores; '
                'precision=bfloat16 would use them (not measured by this project yet: '
                'python -m v2.tools.benchmark --precision=bfloat16 measures it)')
    if not gpus and all(d.has_bf16 for d in used):
        net, bf16, fp32, machine = CPU_BF16_MEASURED
        return ('note: this runs in float32 on a CPU with bfloat16 units; precision=bfloat16 '
                'trained %s %.1fx as fast on a %s (%s against %s images/s, docs/performance.md)'
                % (net, bf16 / fp32, machine, format(bf16, ','), format(fp32, ',')))
    return None


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
        local_assign(self.good_steps, tf.where(finite, tf.where(grow, tf.constant(0, tf.int64),
                                                                self.good_steps + 1),
                                               tf.constant(0, tf.int64)))
        local_assign(self.scale, new_scale)
