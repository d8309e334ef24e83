"""An exponential moving average of a net's weights (Polyak & Juditsky 1992), off by default.

After every update each average moves towards its variable:
    average = d * average + (1 - d) * value,  d = min(decay, (1 + t) / (10 + t))
at step t, so that early in a run the averages follow the weights instead of
remembering their random start (TensorFlow's ExponentialMovingAverage with
num_updates does the same). Batch norm's moving statistics are averaged too, so
the averaged net is evaluated with statistics that match its weights. The averages
are saved in checkpoints; with --ema_decay the trainer's evaluations, the
evaluator and the exports use them instead of the live weights.
"""

import tensorflow as tf

from v2.runtime.distribution import local_assign


class WeightAverage(tf.Module):
    """Averages of every variable of `net` (trainable weights and batch-norm statistics)."""

    def __init__(self, net, decay, name='ema'):
        super().__init__(name=name)
        self.decay = decay
        with self.name_scope:
            self.averages = [
                tf.Variable(v.read_value(), trainable=False, name=v.name.split(':')[0],
                            synchronization=v.synchronization,
                            aggregation=(v.aggregation if v.synchronization ==
                                         tf.VariableSynchronization.ON_READ
                                         else tf.VariableAggregation.ONLY_FIRST_REPLICA))
                for v in net.variables]

    def rate(self, step):
        """The decay d at this step."""
        t = tf.cast(step, tf.float32)
        return tf.minimum(self.decay, (1.0 + t) / (10.0 + t))

    def update(self, net, step, apply=True):
        """Moves every average towards its variable of `net` (in the step, after the update);
        with `apply` False (a skipped step) none moves."""
        d = tf.where(apply, self.rate(step), 1.0)
        for average, source in zip(self.averages, net.variables):
            local_assign(average, d * average + (1.0 - d) * source)

    def copy_to(self, net):
        """Gives `net` (the same architecture) the averaged values, to evaluate or export it."""
        for average, target in zip(self.averages, net.variables):
            target.assign(average.read_value())
