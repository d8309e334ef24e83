"""The building blocks every network here is made of: tf.Module + tf.Variable + tf.nn.

Variables are float32; a layer computes in the dtype of its input (float32, or
bfloat16/float16 for mixed precision), casting its weights to match.
"""

import dataclasses
import math

import tensorflow as tf

# Batch-norm constants of the reference Torch implementation (fb.resnet.torch).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
SHORTCUT_TYPES = ('A', 'A_subsample', 'B', 'C')
# Where a strided convolution puts its window. 'symmetric': one pixel of zeros on every
# side, as the papers' Torch code pads, so output pixel (i, j) is centred on input pixel
# (2i, 2j), the pixel the strided shortcut keeps and the first its 2x2 pool averages.
# 'tf_same': TensorFlow's 'SAME', which pads only the bottom and right and centres the
# window on (2i+1, 2j+1); every checkpoint written before the change used it.
STRIDED_PADDINGS = ('symmetric', 'tf_same')


class Conv2D(tf.Module):
    """A bias-free convolution with He (MSRA) initialisation.

    He et al. 2015, "Delving Deep into Rectifiers": weights ~ N(0, 2 / (k*k*c_in)),
    the initialisation both ResNet papers use. No bias: batch norm follows or
    precedes every convolution here, which makes a bias redundant.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride, rng, name,
                 strided_padding='symmetric'):
        super().__init__(name=name)
        shape = [kernel_size, kernel_size, in_channels, out_channels]
        stddev = math.sqrt(2.0 / (kernel_size * kernel_size * in_channels))
        with self.name_scope:
            self.kernel = tf.Variable(rng.normal(shape, stddev=stddev), name='kernel')
        self.stride = stride
        self.kernel_size = kernel_size
        self.symmetric = stride > 1 and strided_padding == 'symmetric'

    def __call__(self, x):
        kernel = tf.cast(self.kernel, x.dtype)
        if not self.symmetric:                 # stride 1: 'SAME' is symmetric for odd kernels
            return tf.nn.conv2d(x, kernel, self.stride, padding='SAME')
        return tf.nn.conv2d(symmetric_pad(x, self.kernel_size, self.stride), kernel,
                            self.stride, padding='VALID')


def symmetric_pad(x, kernel_size, stride):
    """Zero-pads x so that a VALID strided convolution computes Torch's padding=(k-1)//2.

    The window of output i starts at input row i*stride - (k-1)//2. The rows at the
    bottom and right that such a window never reaches are left out. This padding plus
    a VALID convolution runs on oneDNN's fast kernels; TensorFlow's explicit
    `padding=[[...]]` falls off them in bfloat16 (docs/performance.md, "Why the code is
    as it is").
    """
    before = (kernel_size - 1) // 2
    pads = [[0, 0]]
    for size in x.shape[1:3]:
        out = (size + 2 * before - kernel_size) // stride + 1
        pads.append([before, max(0, (out - 1) * stride + kernel_size - size - before)])
    return tf.pad(x, pads + [[0, 0]])


class BatchNorm(tf.Module):
    """Batch normalisation on the fused kernel (one op for normalise + statistics).

    Training normalises with the batch statistics and updates the moving averages
    (new = momentum * old + (1 - momentum) * batch); evaluation uses the moving
    averages. Scale, offset and statistics stay float32 whatever the dtype of the
    activations.

    Under a tf.distribute strategy each replica normalises with its own batch's
    statistics and keeps its own moving averages (ON_READ variables, averaged over
    the replicas when read for a checkpoint or for evaluation), as the papers' multi-
    GPU training did. `synchronized` (--sync_batch_norm) sums the statistics over all
    replicas first, so a distributed step normalises exactly as one device would with
    the whole global batch. `zero_scale` starts the scale at 0 instead of 1 (Goyal et
    al. 2017), for the batch norm that ends a residual branch.
    """

    def __init__(self, channels, name, momentum=BN_MOMENTUM, synchronized=False,
                 zero_scale=False):
        super().__init__(name=name)
        self.momentum = momentum
        self.synchronized = synchronized
        per_replica = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_READ,
                           aggregation=tf.VariableAggregation.MEAN)
        with self.name_scope:
            self.gamma = tf.Variable((tf.zeros if zero_scale else tf.ones)([channels]),
                                     name='gamma')
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
            epsilon=BN_EPSILON, exponential_avg_factor=1.0 - self.momentum,
            data_format='NHWC', is_training=training)
        if training:
            # With exponential_avg_factor the kernel returns the updated averages.
            self.moving_mean.assign(out.batch_mean)
            self.moving_variance.assign(out.batch_variance)
        return out.y

    def with_relu(self, x, training):
        """ReLU(BN(x)): the pair every unit applies, in one place so that it can be fused."""
        return tf.nn.relu(self(x, training))

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
        factor = 1.0 - self.momentum            # as the fused kernel: unbiased running variance
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
        return tf.nn.experimental.stateless_dropout(x, self.rate, seed=self.rng.make_seeds(1)[:, 0],
                                                    rng_alg='philox')


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

    def __init__(self, in_channels, out_channels, stride, batch_norm, make, name='shortcut'):
        super().__init__(name=name)
        with self.name_scope:
            self.conv = make.conv(in_channels, out_channels, 1, stride, name='conv')
            self.bn = make.norm(out_channels, name='bn') if batch_norm else None

    def __call__(self, x, training):
        y = self.conv(x)
        return self.bn(y, training) if self.bn else y


def shortcut(kind, in_channels, out_channels, stride, post_activation, make):
    """The shortcut of one unit for shortcut option `kind` (A, A_subsample, B or C)."""
    changes_shape = stride != 1 or in_channels != out_channels
    if kind == 'C' or (kind == 'B' and changes_shape):
        return Projection(in_channels, out_channels, stride, post_activation, make)
    return IdentityShortcut(out_channels, stride, pool=(kind != 'A_subsample'))


@dataclasses.dataclass(frozen=True)
class Factory:
    """Makes a net's layers: the one place that holds the RNG and the layer options.

    Units and shortcuts receive one and ask it for every layer, so that a choice such
    as the strided padding or batch norm's momentum is made once, when the net is
    built. Layers draw from `rng` in the order they are made.
    """
    rng: tf.random.Generator
    _: dataclasses.KW_ONLY                  # the options by name: a swap would be silent
    strided_padding: str = 'symmetric'
    bn_momentum: float = BN_MOMENTUM
    sync_batch_norm: bool = False
    dropout_rate: float = 0.0
    zero_init_residual: bool = False
    norm_class: type = BatchNorm

    def conv(self, in_channels, out_channels, kernel_size, stride, name, ends_branch=False):
        """A conv; the last conv of a pre-activation residual branch starts at zero with
        zero_init_residual (that branch ends with no batch norm to zero instead)."""
        conv = Conv2D(in_channels, out_channels, kernel_size, stride, self.rng, name,
                      self.strided_padding)
        if ends_branch and self.zero_init_residual:
            conv.kernel.assign(tf.zeros_like(conv.kernel))
        return conv

    def norm(self, channels, name, ends_branch=False):
        """A batch norm; one that ends a residual branch starts with scale 0 with
        zero_init_residual, so that the unit starts as its shortcut (Goyal et al. 2017)."""
        return self.norm_class(channels, name, self.bn_momentum, self.sync_batch_norm,
                               zero_scale=ends_branch and self.zero_init_residual)

    def dropout(self, name):
        """Dropout at dropout_rate, or None when the rate is 0."""
        if not self.dropout_rate:
            return None
        return Dropout(self.dropout_rate, int(self.rng.uniform_full_int([])), name)

    def dense(self, in_features, out_features, name):
        return Dense(in_features, out_features, self.rng, name)
