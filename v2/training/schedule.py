"""The learning-rate schedule: piecewise constant (the papers') or cosine, with a warm-up.

He et al. 2015, section 4.2: 0.1, divided by 10 at 32k and 48k iterations, stop at
64k; for ResNet-110, 0.01 for the first 400 iterations "to warm up training" (a
'constant' warm-up). Goyal et al. 2017 ("Accurate, Large Minibatch SGD") found the
sudden jump at the end of such a warm-up harmful and raise the rate gradually
instead: a 'linear' warm-up goes from warmup_lr to the first rate in
warmup_iterations equal steps. 'cosine' decay (Loshchilov & Hutter 2017, SGDR,
without restarts) lowers the first rate to 0 along half a cosine, from the end of
the warm-up to cosine_steps; it ignores the boundaries.
"""

import dataclasses
import math

import tensorflow as tf

from v2.errors import UserError

WARMUPS = ('constant', 'linear')
DECAYS = ('piecewise', 'cosine')


@dataclasses.dataclass(frozen=True)
class Schedule:
    """values[i] applies from boundaries[i-1] (inclusive) up to boundaries[i]."""
    boundaries: tuple[int, ...] = (32000, 48000)
    values: tuple[float, ...] = (0.1, 0.01, 0.001)
    warmup_iterations: int = 0
    warmup_lr: float = 0.01
    warmup: str = 'constant'            # or 'linear' (Goyal et al. 2017)
    decay: str = 'piecewise'            # or 'cosine'
    cosine_steps: int = 0               # where a cosine decay reaches 0: the run's length

    def __post_init__(self):
        if self.decay not in DECAYS:
            raise UserError('lr_decay=%s: expected one of %s' % (self.decay, '|'.join(DECAYS)),
                            settings=('lr_decay',))
        if self.decay == 'piecewise' and len(self.values) != len(self.boundaries) + 1:
            raise UserError('lr_values needs one value more than lr_boundaries '
                            '(got %d values for %d boundaries)'
                            % (len(self.values), len(self.boundaries)),
                            settings=('lr_values', 'lr_boundaries'))
        if any(b <= a for a, b in zip(self.boundaries, self.boundaries[1:])) or \
                any(b <= 0 for b in self.boundaries):
            raise UserError('lr_boundaries=%s must be positive and strictly increasing'
                            % ','.join(str(b) for b in self.boundaries),
                            settings=('lr_boundaries',))
        if not self.values or not all(0 < v < float('inf') for v in self.values):  # also nan
            raise UserError('lr_values=%s must all be positive and finite'
                            % ','.join(str(v) for v in self.values), settings=('lr_values',))
        if self.warmup not in WARMUPS:
            raise UserError('warmup=%s: expected one of %s' % (self.warmup, '|'.join(WARMUPS)),
                            settings=('warmup',))
        if self.decay == 'cosine' and self.cosine_steps <= self.warmup_iterations:
            raise UserError('lr_decay=cosine needs more steps than the warm-up: '
                            'num_iterations=%d is not above warmup_iterations=%d'
                            % (self.cosine_steps, self.warmup_iterations),
                            settings=('lr_decay', 'num_iterations', 'warmup_iterations'))

    def __call__(self, step):
        """The learning rate (float32 tensor) used for the update of iteration `step`."""
        step = tf.cast(step, tf.int64)
        if self.decay == 'cosine':
            done = (tf.cast(step - self.warmup_iterations, tf.float32)
                    / (self.cosine_steps - self.warmup_iterations))
            rate = self.values[0] * 0.5 * (1.0 + tf.cos(math.pi * tf.clip_by_value(done, 0., 1.)))
        else:
            index = tf.reduce_sum(tf.cast(step >= tf.constant(self.boundaries, tf.int64),
                                          tf.int32))
            rate = tf.gather(tf.constant(self.values, tf.float32), index)
        if self.warmup_iterations:
            start = tf.constant(self.warmup_lr)
            if self.warmup == 'linear':
                done = tf.cast(step, tf.float32) / self.warmup_iterations
                start = start + (rate - start) * done
            rate = tf.where(step < self.warmup_iterations, start, rate)
        return rate
