"""SGD with momentum, on TensorFlow's fused momentum kernel.

The update of He et al. 2015 (momentum 0.9): accum = momentum * accum + grad;
var -= lr * accum (or the Nesterov form). One slot per variable, created here so
that it is saved and restored with the checkpoint like any other variable.
"""

import tensorflow as tf


class Momentum(tf.Module):
    """Momentum SGD over a fixed list of variables."""

    def __init__(self, variables, momentum=0.9, nesterov=False, name='momentum'):
        super().__init__(name=name)
        self.momentum = momentum
        self.nesterov = nesterov
        with self.name_scope:
            self.accumulators = [
                tf.Variable(tf.zeros_like(v), trainable=False, name=v.name.split(':')[0])
                for v in variables]

    def apply(self, grads, variables, learning_rate):
        """Applies one update; grads and variables in the order given at construction."""
        for grad, var, accum in zip(grads, variables, self.accumulators):
            tf.raw_ops.ResourceApplyMomentum(
                var=var.handle, accum=accum.handle, lr=tf.cast(learning_rate, var.dtype),
                grad=grad, momentum=tf.cast(self.momentum, var.dtype),
                use_nesterov=self.nesterov)
