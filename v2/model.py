"""The pre-activation ResNet for CIFAR, hand-built from tf.Module, tf.Variable and tf.nn.

Layout of He et al. 2015 ("Deep Residual Learning", section 4.2): a 3x3 conv with
16 filters, then three stages of n units on 32x32, 16x16 and 8x8 maps with 16, 32
and 64 filters, global average pooling and a linear layer; 6n+2 weighted layers.
Units of He et al. 2016 ("Identity Mappings"): BN -> ReLU -> conv, twice, added to
an identity shortcut. No Keras anywhere: every variable is created here.
"""

import dataclasses
import json
import math

import tensorflow as tf

from v2.errors import UserError

STAGE_WIDTHS = (16, 32, 64)
# Batch-norm constants of the reference Torch implementation (fb.resnet.torch).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def units_per_stage(num_layers):
    """n for a 6n+2-layer net; UserError for any depth not of that form."""
    if num_layers < 8 or (num_layers - 2) % 6:
        raise UserError('--num_layers=%d: the depth must be 6n+2 with n >= 1 '
                        '(8, 14, 20, 32, 44, 56, 110, 1202, ...)' % num_layers)
    return (num_layers - 2) // 6


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the shape of the network; stored in every checkpoint."""
    num_layers: int = 110
    shortcut_connections: bool = True
    num_classes: int = 10

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in json.loads(text).items() if k in fields})

    def describe(self):
        """A short human name, e.g. "ResNet-110" or "plain-56"."""
        return '%s-%d' % ('ResNet' if self.shortcut_connections else 'plain', self.num_layers)


class Conv2D(tf.Module):
    """A bias-free convolution with He (MSRA) initialisation.

    He et al. 2015, "Delving Deep into Rectifiers": weights ~ N(0, 2 / (k*k*c_in)),
    the initialisation both ResNet papers use.
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
    """

    def __init__(self, channels, name):
        super().__init__(name=name)
        with self.name_scope:
            self.gamma = tf.Variable(tf.ones([channels]), name='gamma')
            self.beta = tf.Variable(tf.zeros([channels]), name='beta')
            self.moving_mean = tf.Variable(tf.zeros([channels]), trainable=False,
                                           name='moving_mean')
            self.moving_variance = tf.Variable(tf.ones([channels]), trainable=False,
                                               name='moving_variance')

    def __call__(self, x, training):
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


def identity_shortcut(x, out_channels, stride):
    """The parameter-free shortcut (option A of He et al. 2015).

    Where a stage halves the map, 2x2 average pooling with stride 2 subsamples it;
    where it widens, the new channels are zeros, split evenly on both sides.
    """
    if stride > 1:
        x = tf.nn.avg_pool2d(x, ksize=stride, strides=stride, padding='VALID')
    extra = out_channels - x.shape[-1]
    if extra:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])
    return x


class PreActUnit(tf.Module):
    """BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 3x3 conv, plus the shortcut.

    He et al. 2016, Figure 4(e). `share_preact` is set on the very first unit of the
    net: its input is a bare convolution output, so its shortcut takes the
    BN -> ReLU output too (the first unit of He et al. 2016's CIFAR nets).
    """

    def __init__(self, in_channels, out_channels, stride, shortcut, share_preact, rng, name):
        super().__init__(name=name)
        with self.name_scope:
            self.bn1 = BatchNorm(in_channels, name='bn1')
            self.conv1 = Conv2D(in_channels, out_channels, 3, stride, rng, name='conv1')
            self.bn2 = BatchNorm(out_channels, name='bn2')
            self.conv2 = Conv2D(out_channels, out_channels, 3, 1, rng, name='conv2')
        self.out_channels = out_channels
        self.stride = stride
        self.shortcut = shortcut
        self.share_preact = share_preact

    def __call__(self, x, training):
        preact = tf.nn.relu(self.bn1(x, training))
        y = self.conv1(preact)
        y = self.conv2(tf.nn.relu(self.bn2(y, training)))
        if not self.shortcut:          # the plain net of He et al. 2015, Figure 6
            return y
        return y + identity_shortcut(preact if self.share_preact else x,
                                     self.out_channels, self.stride)


class ResNet(tf.Module):
    """A 6n+2-layer pre-activation ResNet (or its plain twin) for 32x32 images.

    Call it on a float batch [B, 32, 32, 3] of mean-subtracted images; it returns
    float32 logits [B, num_classes]. `compute_dtype` (float32 or bfloat16) is the
    dtype of the convolutions; variables are always float32.
    """

    def __init__(self, config, seed=0, compute_dtype=tf.float32, name='resnet'):
        super().__init__(name=name)
        self.config = config
        self.compute_dtype = compute_dtype
        n = units_per_stage(config.num_layers)
        rng = tf.random.Generator.from_seed(seed)
        with self.name_scope:
            self.stem = Conv2D(3, STAGE_WIDTHS[0], 3, 1, rng, name='stem')
            self.stages = []
            channels = STAGE_WIDTHS[0]
            for s, width in enumerate(STAGE_WIDTHS):
                units = []
                for u in range(n):
                    stride = 2 if (s > 0 and u == 0) else 1
                    units.append(PreActUnit(channels, width, stride, config.shortcut_connections,
                                            share_preact=(s == 0 and u == 0), rng=rng,
                                            name='stage%d_unit%d' % (s + 1, u + 1)))
                    channels = width
                self.stages.append(units)
            self.final_bn = BatchNorm(channels, name='final_bn')
            self.fc = Dense(channels, config.num_classes, rng, name='fc')

    def __call__(self, images, training=False, trace=None):
        """Logits for a batch; `trace`, if a list, receives (name, output shape) per part."""
        def note(name, x):
            if trace is not None:
                trace.append((name, tuple(x.shape)))
            return x

        x = note('stem conv 3x3', self.stem(tf.cast(images, self.compute_dtype)))
        for s, units in enumerate(self.stages):
            for unit in units:
                x = unit(x, training)
            note('stage %d (%d units)' % (s + 1, len(units)), x)
        x = tf.nn.relu(self.final_bn(x, training))
        x = note('BN-ReLU, global avg pool', tf.reduce_mean(x, axis=[1, 2]))
        return note('linear', tf.cast(self.fc(x), tf.float32))

    @property
    def decayed_weights(self):
        """The conv and linear kernels: the variables that get L2 weight decay."""
        return [m.kernel for m in self.submodules if isinstance(m, (Conv2D, Dense))]


def count_parameters(module):
    """Number of trainable scalars in a module."""
    return sum(int(v.shape.num_elements()) for v in module.trainable_variables)


def summary(model):
    """Text table of the architecture: parts, output shapes, trainable parameters."""
    trace = []
    model(tf.zeros([1, 32, 32, 3]), training=False, trace=trace)
    params = [count_parameters(model.stem)]
    params += [sum(count_parameters(u) for u in units) for units in model.stages]
    params += [count_parameters(model.final_bn), count_parameters(model.fc)]
    lines = ['%s (%s shortcuts)' % (model.config.describe(),
                                   'identity' if model.config.shortcut_connections else 'no'),
             '%-28s %-16s %12s' % ('part', 'output shape', 'parameters')]
    for (name, shape), count in zip(trace, params):
        lines.append('%-28s %-16s %12s' % (name, 'x'.join(str(d) for d in shape[1:]),
                                           format(count, ',')))
    lines.append('trainable parameters: %s' % format(count_parameters(model), ','))
    return '\n'.join(lines)
