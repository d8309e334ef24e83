"""The building blocks every network here is made of: tf.Module + tf.Variable + tf.nn.

Variables are float32; a layer computes in the dtype of its input (float32, or
bfloat16/float16 for mixed precision), casting its weights to match.
"""

import math

import tensorflow as tf

# Batch-norm constants of the reference Torch implementation (fb.resnet.torch).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
SHORTCUT_TYPES = ('A', 'A_subsample', 'B', 'C')


class Conv2D(tf.Module):
    """A bias-free convolution with He (MSRA) initialisation.

    He et al. 2015, "Delving Deep into Rectifiers": weights ~ N(0, 2 / (k*k*c_in)),
    the initialisation both ResNet papers use. No bias: batch norm follows or
    precedes every convolution here, which makes a bias redundant.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, rng, name):
        super().__init__(name=name)
        shape = [kernel_size, kernel_size, in_channels, out_channels]
        stddev = math.sqrt(2.0 / (kernel_size * kernel_size * in_channels))
        with self.name_scope:
            self.kernel = tf.Variable(rng.normal(shape, stddev=stddev), name='kernel')
        self.stride = stride

    def __call__(self, x):
        return tf.nn.conv2d(x, tf.cast(self.kernel, x.dtype), self.stride, padding='SAME')


class BatchNorm(tf.Module):
    """Batch normalisation on the fused kernel (one op for normalise + statistics).

    Training normalises with the batch statistics and updates the moving averages;
    evaluation uses the moving averages. Scale, offset and statistics stay float32
    whatever the dtype of the activations.

    Under a tf.distribute strategy each replica normalises with its own batch's
    statistics and keeps its own moving averages (ON_READ variables, averaged over
    the replicas when read for a checkpoint or for evaluation), as the papers' multi-
    GPU training did. With `synchronized` set (--sync_batch_norm), the statistics
    are summed over all replicas first, so a distributed step normalises exactly as
    one device would with the whole global batch.
    """
    synchronized = False

    def __init__(self, channels, name):
        super().__init__(name=name)
        per_replica = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.MEAN)
        with self.name_scope:
            self.gamma = tf.Variable(tf.ones([channels]), name='gamma')
            self.beta = tf.Variable(tf.zeros([channels]), name='beta')
            self.moving_mean = tf.Variable(tf.zeros([channels]), name='moving_mean',
                                           **per_replica)
            self.moving_variance = tf.Variable(tf.ones([channels]), name='moving_variance',
                                               **per_replica)

    def __call__(self, x, training):
        if (training and self.synchronized and not tf.distribute.in_cross_replica_context()
                and tf.distribute.get_strategy().num_replicas_in_sync > 1):
            return self._synchronized(x)
        out = tf.raw_ops.FusedBatchNormV3(
            x=x, scale=self.gamma, offset=self.beta,
            mean=self.moving_mean, variance=self.moving_variance,
            epsilon=BN_EPSILON, exponential_avg_factor=1.0 - BN_MOMENTUM,
            data_format='NHWC', is_training=training)
        if training:
            # With exponential_avg_factor the kernel returns the updated averages.
            self.moving_mean.assign(out.batch_mean)
            self.moving_variance.assign(out.batch_variance)
        return out.y

    def _synchronized(self, x):
        """Training-mode batch norm with mean and variance over every replica's batch."""
        x32 = tf.cast(x, tf.float32)
        count = tf.cast(tf.size(x32) // tf.shape(x32)[-1], tf.float32)
        sums = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM,
            [tf.reduce_sum(x32, [0, 1, 2]), tf.reduce_sum(tf.square(x32), [0, 1, 2]), count])
        total, squares, n = sums
        mean = total / n
        variance = tf.maximum(squares / n - tf.square(mean), 0.0)
        y = tf.nn.batch_normalization(x32, mean, variance, self.beta, self.gamma, BN_EPSILON)
        factor = 1.0 - BN_MOMENTUM              # as the fused kernel: unbiased running variance
        self.moving_mean.assign((1 - factor) * self.moving_mean + factor * mean)
        self.moving_variance.assign((1 - factor) * self.moving_variance
                                    + factor * variance * n / tf.maximum(n - 1.0, 1.0))
        return tf.cast(y, x.dtype)


class Dense(tf.Module):
    """The final linear layer; uniform(+-1/sqrt(fan_in)) weights, zero bias."""

    def __init__(self, in_features, out_features, rng, name):
        super().__init__(name=name)
        limit = 1.0 / math.sqrt(in_features)
        with self.name_scope:
            self.kernel = tf.Variable(
                rng.uniform([in_features, out_features], -limit, limit), name='kernel')
            self.bias = tf.Variable(tf.zeros([out_features]), name='bias')

    def __call__(self, x):
        return tf.matmul(x, tf.cast(self.kernel, x.dtype)) + tf.cast(self.bias, x.dtype)


class Dropout(tf.Module):
    """Dropout whose randomness is a checkpointed generator, so a resumed run repeats it."""

    def __init__(self, rate, seed, name):
        super().__init__(name=name)
        self.rate = rate
        with self.name_scope:
            self.rng = tf.random.Generator.from_seed(seed)

    def __call__(self, x, training):
        if not training or not self.rate:
            return x
        return tf.nn.experimental.stateless_dropout(x, self.rate, seed=self.rng.make_seeds(1)[:, 0])


class IdentityShortcut(tf.Module):
    """Option A of He et al. 2015: a parameter-free shortcut.

    Where a stage halves the map, it is subsampled: by 2x2 average pooling with
    stride 2 (`pool`, the default here), or by taking every second pixel (the
    paper's strided identity). Where it widens, the new channels are zeros, split
    evenly on both sides.
    """
    projects = False

    def __init__(self, out_channels, stride, pool=True, name='shortcut'):
        super().__init__(name=name)
        self.out_channels = out_channels
        self.stride = stride
        self.pool = pool

    def __call__(self, x, training):
        if self.stride > 1:
            if self.pool:
                x = tf.nn.avg_pool2d(x, ksize=self.stride, strides=self.stride, padding='VALID')
            else:
                x = x[:, ::self.stride, ::self.stride, :]
        extra = self.out_channels - x.shape[-1]
        if extra:
            x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
        return x


class Projection(tf.Module):
    """Options B and C of He et al. 2015: a strided 1x1 convolution.

    Followed by batch norm in post-activation nets (He et al. 2015); in
    pre-activation nets it takes the unit's already-normalised input and adds no
    batch norm of its own (He et al. 2016).
    """
    projects = True

    def __init__(self, in_channels, out_channels, stride, batch_norm, rng, name='shortcut'):
        super().__init__(name=name)
        with self.name_scope:
            self.conv = Conv2D(in_channels, out_channels, 1, stride, rng, name='conv')
            self.bn = BatchNorm(out_channels, name='bn') if batch_norm else None

    def __call__(self, x, training):
        y = self.conv(x)
        return self.bn(y, training) if self.bn else y


def shortcut(kind, in_channels, out_channels, stride, post_activation, rng):
    """The shortcut of one unit for shortcut option `kind` (A, A_subsample, B or C)."""
    changes_shape = stride != 1 or in_channels != out_channels
    if kind == 'C' or (kind == 'B' and changes_shape):
        return Projection(in_channels, out_channels, stride, post_activation, rng)
    return IdentityShortcut(out_channels, stride, pool=(kind != 'A_subsample'))
