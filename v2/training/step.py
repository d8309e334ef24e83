"""The traced training step, and the device-side sums of its metrics.

One call of the function that make_train_steps returns runs n steps: each pulls a uint8
batch, normalises and augments it on the device (v2.data.pipeline.prepare_batch;
a float32 batch comes prepared by the input pipeline, as on a CPU), computes the
loss and its gradients, applies the momentum update and adds the step's metrics
to sums kept on the device (Window). Nothing is read back to the host during a
call; the loop reads the sums once per logging window. On a GPU the
host therefore only enqueues work.

The loss is the mean cross-entropy (with label_smoothing: against the smoothed
targets of Szegedy et al. 2016) plus weight_decay * sum(||w||^2) / 2 over the conv
and linear kernels (L2 weight decay; batch norm's scale and offset and the bias
are not decayed). Under a tf.distribute strategy each replica's cross-entropy is
averaged over the GLOBAL batch and its weight decay divided by the number of
replicas, so that the gradients summed over the replicas are those of the whole
batch; every replica then applies that same update to its own copy of the weights.
"""

import dataclasses

import tensorflow as tf

from v2.data import pipeline
from v2.nets import layers
from v2.nets.model import decayed_weights
from v2.runtime.distribution import local_add, local_assign
from v2.training import distill
from v2.training.nonfinite import NonFinitePolicy
from v2.training.optimizer import Momentum
from v2.training.schedule import Schedule

# What the Window sums, in this order; the means of a window are reported under these names.
METRICS = ('loss', 'cross_entropy', 'l2_loss', 'accuracy', 'learning_rate')
# A window as read: the sums, the counts of updated and skipped steps, the first bad step.
WINDOW = METRICS + ('updated', 'skipped', 'first_bad')


class Window(tf.Module):
    """Sums of the step metrics since the last read, kept on the device that trains.

    Every replica adds the same global values to its own copy (the metrics are all-
    reduced with the gradients), and a read takes the first replica's.
    """

    def __init__(self, name='window'):
        super().__init__(name=name)
        local = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                     aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        with self.name_scope:
            self.sums = tf.Variable(tf.zeros([len(METRICS)]), name='sums', **local)
            self.updated = tf.Variable(0.0, name='updated', **local)
            self.skipped = tf.Variable(0.0, name='skipped', **local)
            self.first_bad = tf.Variable(tf.constant(-1, tf.int64), name='first_bad', **local)

    def add(self, values, updated, bad, step):
        """Adds one step: its metric values if it updated the weights, else a skip.

        `bad` marks a step with a non-finite loss or gradient that nan_policy 'stop' ends
        the run on; the first such step is kept, so that the loop can name it.
        """
        local_add(self.sums, tf.where(updated, values, tf.zeros_like(values)))
        local_add(self.updated, tf.cast(updated, tf.float32))
        local_add(self.skipped, 1.0 - tf.cast(updated, tf.float32))
        local_assign(self.first_bad, tf.where(bad & (self.first_bad < 0), step, self.first_bad))

    def read_and_reset(self):
        """[sums..., updated, skipped, first_bad] as one float32 vector; then zeros."""
        vector = tf.concat([self.sums.read_value(), [self.updated.read_value(),
                                                      self.skipped.read_value(),
                                                      tf.cast(self.first_bad, tf.float32)]], 0)
        with tf.control_dependencies([vector]):
            self.sums.assign(tf.zeros_like(self.sums))
            self.updated.assign(0.0)
            self.skipped.assign(0.0)
            self.first_bad.assign(tf.constant(-1, tf.int64))
        return tf.identity(vector)


@dataclasses.dataclass
class StepParts:
    """What one training step reads and writes."""
    model: tf.Module
    optimizer: Momentum
    schedule: Schedule
    step: tf.Variable
    window: Window
    pixel_mean: tf.Variable
    weight_decay: float = 1e-4
    seed: int = 0
    label_smoothing: float = 0.0
    cutout: int = 0
    mixing: pipeline.Mixing = pipeline.Mixing()
    teacher: tf.Module | None = None    # knowledge distillation (v2.training.distill)
    kd_alpha: float = 0.9
    kd_temperature: float = 4.0
    loss_scale: tf.Module | None = None
    nan_policy: str = 'stop'            # or 'skip_step' (v2.training.nonfinite)
    ema: tf.Module | None = None


def make_train_steps(parts: StepParts, strategy=None, global_batch=None, jit_compile=False):
    """The traced function train_steps(iterator, n): n training steps, nothing read back.

    Each replica prepares its share of the batch (prepare), computes the loss and its
    gradients (loss_and_gradients), and after one all-reduce of the gradients and the
    metrics applies the update (apply_update). With jit_compile the per-replica
    computation is compiled with XLA: all of it on one device, and around the
    all-reduce (which XLA does not compile across devices) under a strategy of several
    replicas. A step whose loss or gradients are not finite is skipped or counted as bad
    as the nan_policy and the loss scale say (v2.training.nonfinite).
    """
    p = parts
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    non_finite = NonFinitePolicy.of(p.nan_policy, p.loss_scale)
    statistics = batch_norm_statistics(p.model)

    def compute(images, labels):
        """Forward and backward on this replica's share: (gradients, metric shares, and the
        batch-norm statistics from before the forward pass where a step may be skipped)."""
        before = ([tf.identity(v.read_value()) for v in statistics] if non_finite.may_skip
                  else [])
        batch = global_batch or tf.shape(labels)[0] * replicas
        with tf.control_dependencies(before):
            images, labels, targets = prepare(p, images, labels, batch)
            return loss_and_gradients(p, images, labels, targets, batch, replicas) + (before,)

    def finish(grads, shares, before):
        apply_update(p, grads, shares, before, statistics, non_finite)

    if jit_compile:
        compute = tf.function(compute, jit_compile=True)
        finish = tf.function(finish, jit_compile=True)

    def replica_step(images, labels):
        grads, shares, before = compute(images, labels)
        if replicas > 1:        # one batched all-reduce for the gradients and the metrics
            grads, shares = tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, (grads, shares))
        finish(grads, shares, before)

    @tf.function
    def train_steps(iterator, n):
        # An int32 counter stays in host memory on a GPU: no copy back per iteration.
        for _ in tf.range(tf.cast(n, tf.int32)):
            images, labels = next(iterator)
            strategy.run(replica_step, args=(images, labels))

    return train_steps


def batch_norm_statistics(model):
    """The moving means and variances of every batch norm of `model`."""
    return [v for m in model.submodules if isinstance(m, layers.BatchNorm)
            for v in (m.moving_mean, m.moving_variance)]


def prepare(p: StepParts, images, labels, batch):
    """This replica's share of the batch as the step trains on it: (images, labels, targets).

    uint8 images are normalised and augmented here, on the device (a float32 batch comes
    prepared by the input pipeline, as on a CPU), and mixed where the recipe mixes;
    `targets` are the label distributions of mixed or smoothed labels (None otherwise),
    and `labels` then the larger share's label, for the accuracy."""
    num_classes = p.model.config.num_classes
    targets = labels if labels.dtype.is_floating else None   # mixed on the host
    if images.dtype == tf.uint8:
        first = (tf.distribute.get_replica_context().replica_id_in_sync_group
                 * tf.shape(labels)[0])
        key = pipeline.step_key(p.seed, p.step)
        images = pipeline.prepare_batch(images, p.pixel_mean, key, first, batch, p.cutout)
        if p.mixing:
            images, targets = pipeline.mix(images, labels, num_classes, key, p.mixing, first)
    if targets is not None:               # accuracy: against the larger share's label
        labels = tf.argmax(targets, -1, output_type=tf.int32)
    elif p.label_smoothing:
        targets = tf.one_hot(labels, num_classes)
    return images, labels, targets


def loss_and_gradients(p: StepParts, images, labels, targets, batch, replicas):
    """(the gradients, this replica's shares of [loss, cross_entropy, l2, accuracy]): shares
    of the global batch's means, whose sum over the replicas is the mean."""
    num_classes = p.model.config.num_classes
    teacher_logits = p.teacher(images) if p.teacher is not None else None
    variables = p.model.trainable_variables
    with tf.GradientTape() as tape:
        logits = p.model(images, training=True)
        if targets is not None:
            if p.label_smoothing:          # Szegedy et al. 2016, of the mixed targets
                targets = targets * (1.0 - p.label_smoothing) + p.label_smoothing / num_classes
            per_example = tf.nn.softmax_cross_entropy_with_logits(targets, logits)
        else:
            per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        if teacher_logits is not None:
            per_example = distill.loss(per_example, logits, teacher_logits, p.kd_alpha,
                                       p.kd_temperature)
        cross_entropy = tf.nn.compute_average_loss(per_example, global_batch_size=batch)
        l2 = (p.weight_decay * tf.add_n([tf.nn.l2_loss(w) for w in decayed_weights(p.model)])
              / replicas)
        loss = cross_entropy + l2
        scaled = loss * p.loss_scale.scale if p.loss_scale else loss
    grads = tape.gradient(scaled, variables)
    correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
    accuracy = tf.nn.compute_average_loss(tf.cast(correct, tf.float32), global_batch_size=batch)
    return grads, tf.stack([loss, cross_entropy, l2, accuracy])


def apply_update(p: StepParts, grads, shares, before, statistics, non_finite):
    """Updates with the summed gradients (or skips the step, restoring the batch-norm
    statistics `before` its forward pass); counts its metrics in the window."""
    learning_rate = p.schedule(p.step)
    if p.loss_scale:
        grads = [g / p.loss_scale.scale for g in grads]
    loss_finite = tf.math.is_finite(shares[0])
    finite = tf.logical_and(loss_finite, tf.reduce_all(
        [tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
    updated, bad = non_finite.judge(loss_finite, finite)
    p.optimizer.apply(grads, p.model.trainable_variables, learning_rate,
                      finite if non_finite.may_skip else None)
    for variable, old in zip(statistics, before):       # a skipped step's forward pass
        local_assign(variable, tf.where(finite, variable, old))
    if p.ema:
        p.ema.update(p.model, p.step, updated)
    if p.loss_scale:
        p.loss_scale.update(finite)
    p.window.add(tf.concat([shares, [learning_rate]], 0), updated, bad, p.step)
    local_add(p.step, 1)


class WindowReader:
    """The end of a logging window: its sums, read from the device once, by name.

    reader(stop, save) returns {name: value} for WINDOW (then 'loss_scale' where there is
    one, then 'stop' and 'save'), from one traced function whose result comes to the
    host as one vector: one host read per window. With `agree` (multi_worker) the stop
    and save requests are summed over the replicas of every worker, so that every worker
    stops or saves at the same step; a worker that did alone would leave the others
    waiting in the next collective.
    """

    def __init__(self, window: Window, strategy, agree: bool = False, loss_scale=None):
        self.names = WINDOW + (('loss_scale',) if loss_scale is not None else ()) + (
            'stop', 'save')

        @tf.function
        def read(requests):
            parts = [window.read_and_reset()]
            if loss_scale is not None:
                parts.append([loss_scale.scale.read_value()])
            if agree:
                per_replica = strategy.run(lambda: tf.identity(requests))
                requests = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
            return tf.concat(parts + [tf.cast(requests, tf.float32)], 0)
        self._read = read

    def __call__(self, stop=False, save=False) -> dict:
        vector = self._read(tf.constant([float(stop), float(save)])).numpy()
        return dict(zip(self.names, vector.tolist()))
