"""SGD with momentum, on TensorFlow's fused momentum kernel.

The update of He et al. 2015 (momentum 0.9): accum = momentum * accum + grad;
var -= lr * accum (or the Nesterov form, var -= lr * (grad + momentum * accum),
as Zagoruyko & Komodakis 2016 train wide ResNets). One slot per variable, created
here so that it is saved and restored with the checkpoint like any other variable.
"""

from collections.abc import Sequence

import tensorflow as tf


class Momentum(tf.Module):
    """Momentum SGD over a fixed list of variables."""

    def __init__(self, variables: Sequence[tf.Variable], momentum: float = 0.9,
                 nesterov: bool = False, name: str = 'momentum'):
        super().__init__(name=name)
        self.momentum = momentum
        self.nesterov = nesterov
        with self.name_scope:
            self.accumulators = [
                tf.Variable(tf.zeros_like(v), trainable=False, name=v.name.split(':')[0])
                for v in variables]

    def apply(self, grads, variables, learning_rate, finite: tf.Tensor | None = None):
        """Applies one update; grads and variables in the order given at construction.

        With `finite` (a boolean scalar) False, nothing changes: the rate becomes 0, the
        gradient 0 and the momentum 1, so accum and var keep their values. This skips
        a non-finite step on the device, without a branch whose condition the host
        would have to wait for.
        """
        momentum = tf.constant(self.momentum, tf.float32)
        rate = tf.cast(learning_rate, tf.float32)
        if finite is not None:
            rate = tf.where(finite, rate, 0.0)
            momentum = tf.where(finite, momentum, 1.0)
            grads = [tf.where(finite, g, tf.zeros_like(g)) for g in grads]
        for grad, var, accum in zip(grads, variables, self.accumulators):
            tf.raw_ops.ResourceApplyMomentum(
                var=var.handle, accum=accum.handle, lr=tf.cast(rate, var.dtype), grad=grad,
                momentum=tf.cast(momentum, var.dtype), use_nesterov=self.nesterov)
