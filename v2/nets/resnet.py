"""Residual units and the one ResNet class that the CIFAR, wide and ImageNet families share.

A net is a 3x3 stem convolution, stages of units (the first unit of a stage may
change the stride and the width), global average pooling and a linear layer.
What differs between the papers is the unit and the shortcut:

- pre-activation units, He et al. 2016 ("Identity Mappings"): BN -> ReLU -> conv,
  the addition left unactivated; the net ends with a final BN -> ReLU.
- post-activation units, He et al. 2015 ("Deep Residual Learning"): conv -> BN ->
  ReLU, the sum followed by a ReLU; the stem is conv -> BN -> ReLU.
- basic units (two 3x3 convs) or bottlenecks (1x1 -> 3x3 -> 1x1, 4x expansion).
"""

import tensorflow as tf

from v2.nets import layers

EXPANSION = 4           # bottleneck output width / inner width (He et al. 2015, 2016)


def join_preact(unit, y, x, preact, training):
    """Adds a pre-activation unit's shortcut to its residual branch y (or not: plain nets).

    The shortcut takes the raw input x, except where it projects or where the unit
    shares its pre-activation (the net's first unit, whose input is a bare conv
    output): there it takes the unit's BN -> ReLU output, as in He et al. 2016.
    """
    if unit.shortcut is None:              # the plain net of He et al. 2015, Figure 6
        return y
    source = preact if (unit.share_preact or unit.shortcut.projects) else x
    return y + unit.shortcut(source, training)


def join_postact(unit, y, x, training):
    """The sum of a post-activation unit's branch and shortcut, then ReLU (He et al. 2015)."""
    if unit.shortcut is not None:
        y = y + unit.shortcut(x, training)
    return tf.nn.relu(y)


class PreActBasic(tf.Module):
    """BN -> ReLU -> 3x3 conv -> BN -> ReLU -> [dropout] -> 3x3 conv, plus the shortcut.

    He et al. 2016, Figure 4(e); dropout between the convs as in Zagoruyko &
    Komodakis 2016. See join_preact for what the shortcut takes.
    """
    expansion = 1

    def __init__(self, in_channels, width, stride, shortcut, share_preact, make, name):
        super().__init__(name=name)
        with self.name_scope:
            self.bn1 = make.norm(in_channels, name='bn1')
            self.conv1 = make.conv(in_channels, width, 3, stride, name='conv1')
            self.bn2 = make.norm(width, name='bn2')
            self.dropout = make.dropout('dropout')
            self.conv2 = make.conv(width, width, 3, 1, name='conv2',
                                   ends_branch=shortcut is not None)
            self.shortcut = shortcut
        self.share_preact = share_preact

    def __call__(self, x, training):
        preact = self.bn1.with_relu(x, training)
        y = self.bn2.with_relu(self.conv1(preact), training)
        if self.dropout:
            y = self.dropout(y, training)
        return join_preact(self, self.conv2(y), x, preact, training)


class PreActBottleneck(tf.Module):
    """BN -> ReLU -> 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv (x4 wide).

    He et al. 2016's bottleneck (ResNet-164, ResNet-1001). The stride sits on the
    3x3 conv; see join_preact for what the shortcut takes.
    """
    expansion = EXPANSION

    def __init__(self, in_channels, width, stride, shortcut, share_preact, make, name):
        super().__init__(name=name)
        out_channels = width * EXPANSION
        with self.name_scope:
            self.bn1 = make.norm(in_channels, name='bn1')
            self.conv1 = make.conv(in_channels, width, 1, 1, name='conv1')
            self.bn2 = make.norm(width, name='bn2')
            self.conv2 = make.conv(width, width, 3, stride, name='conv2')
            self.bn3 = make.norm(width, name='bn3')
            self.conv3 = make.conv(width, out_channels, 1, 1, name='conv3',
                                   ends_branch=shortcut is not None)
            self.shortcut = shortcut
        self.share_preact = share_preact

    def __call__(self, x, training):
        preact = self.bn1.with_relu(x, training)
        y = self.bn2.with_relu(self.conv1(preact), training)
        y = self.bn3.with_relu(self.conv2(y), training)
        return join_preact(self, self.conv3(y), x, preact, training)


class PostActBasic(tf.Module):
    """3x3 conv -> BN -> ReLU -> [dropout] -> 3x3 conv -> BN, plus the shortcut, then ReLU.

    The unit of He et al. 2015, Figure 2; the plain net drops only the addition.
    """
    expansion = 1

    def __init__(self, in_channels, width, stride, shortcut, share_preact, make, name):
        super().__init__(name=name)
        with self.name_scope:
            self.conv1 = make.conv(in_channels, width, 3, stride, name='conv1')
            self.bn1 = make.norm(width, name='bn1')
            self.dropout = make.dropout('dropout')
            self.conv2 = make.conv(width, width, 3, 1, name='conv2')
            self.bn2 = make.norm(width, name='bn2', ends_branch=shortcut is not None)
            self.shortcut = shortcut

    def __call__(self, x, training):
        y = self.bn1.with_relu(self.conv1(x), training)
        if self.dropout:
            y = self.dropout(y, training)
        return join_postact(self, self.bn2(self.conv2(y), training), x, training)


class PostActBottleneck(tf.Module):
    """1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU -> 1x1 conv -> BN, + shortcut, ReLU.

    The bottleneck of He et al. 2015, Figure 5 (right), stride on the 3x3 conv.
    """
    expansion = EXPANSION

    def __init__(self, in_channels, width, stride, shortcut, share_preact, make, name):
        super().__init__(name=name)
        out_channels = width * EXPANSION
        with self.name_scope:
            self.conv1 = make.conv(in_channels, width, 1, 1, name='conv1')
            self.bn1 = make.norm(width, name='bn1')
            self.conv2 = make.conv(width, width, 3, stride, name='conv2')
            self.bn2 = make.norm(width, name='bn2')
            self.conv3 = make.conv(width, out_channels, 1, 1, name='conv3')
            self.bn3 = make.norm(out_channels, name='bn3', ends_branch=shortcut is not None)
            self.shortcut = shortcut

    def __call__(self, x, training):
        y = self.bn1.with_relu(self.conv1(x), training)
        y = self.bn2.with_relu(self.conv2(y), training)
        return join_postact(self, self.bn3(self.conv3(y), training), x, training)


UNITS = {(2, False): PreActBasic, (2, True): PreActBottleneck,
         (1, False): PostActBasic, (1, True): PostActBottleneck}


class ResNet(tf.Module):
    """Stem, stages of residual units, pooling, linear layer.

    Args:
      stages: (number of units, inner width, stride of the first unit) per stage.
      stem_width: filters of the 3x3 stem convolution.
      version: 2 for pre-activation units (He et al. 2016), 1 for post-activation.
      bottleneck: 1x1-3x3-1x1 units with 4x expansion instead of two 3x3 convs.
      shortcut_type: 'A', 'A_subsample', 'B' or 'C' (see layers.shortcut); None for
        the plain net (the same layers without any addition).
      num_classes: width of the linear layer.
      make: a layers.Factory: the initialisation seed and the layer options (strided
        padding, batch-norm momentum, dropout between the convs of basic units, ...).
      compute_dtype: dtype of the activations; variables stay float32.
    """

    def __init__(self, stages, make, stem_width=16, version=2, bottleneck=False,
                 shortcut_type='A', num_classes=10, compute_dtype=tf.float32, name='resnet'):
        super().__init__(name=name)
        self.compute_dtype = compute_dtype
        self.version = version
        unit_class = UNITS[(version, bottleneck)]
        with self.name_scope:
            self.stem = make.conv(3, stem_width, 3, 1, name='stem')
            self.stem_bn = make.norm(stem_width, name='stem_bn') if version == 1 else None
            channels = stem_width
            self.stages = []
            for s, (count, width, first_stride) in enumerate(stages):
                units = []
                for u in range(count):
                    stride = first_stride if u == 0 else 1
                    out_channels = width * unit_class.expansion
                    link = (layers.shortcut(shortcut_type, channels, out_channels, stride,
                                            version == 1, make) if shortcut_type else None)
                    units.append(unit_class(channels, width, stride, link,
                                            share_preact=(s == 0 and u == 0), make=make,
                                            name='stage%d_unit%d' % (s + 1, u + 1)))
                    channels = out_channels
                self.stages.append(units)
            self.final_bn = make.norm(channels, name='final_bn') if version == 2 else None
            self.fc = make.dense(channels, num_classes, name='fc')

    def __call__(self, images, training=False, trace=None):
        """Float32 logits for a batch of mean-subtracted images [B, H, W, 3].

        `trace`, if a list, receives (part name, output shape) for every part in
        the order of `parts()`.
        """
        def note(name, x):
            if trace is not None:
                trace.append((name, tuple(x.shape)))
            return x

        x = self.stem(tf.cast(images, self.compute_dtype))
        if self.stem_bn:
            x = self.stem_bn.with_relu(x, training)
        x = note('stem', x)
        for s, units in enumerate(self.stages):
            for unit in units:
                x = unit(x, training)
            note('stage %d' % (s + 1), x)
        if self.final_bn:
            x = self.final_bn.with_relu(x, training)
        x = note(self._pool_name(), tf.reduce_mean(x, axis=[1, 2]))
        return note('linear', tf.cast(self.fc(x), tf.float32))

    def _pool_name(self):
        return 'BN, ReLU, average pool' if self.final_bn else 'global average pool'

    def parts(self):
        """(name, modules) of each part whose output __call__ traces, for summaries."""
        stem = [self.stem] + ([self.stem_bn] if self.stem_bn else [])
        return ([('stem', stem)]
                + [('stage %d' % (s + 1), units) for s, units in enumerate(self.stages)]
                + [(self._pool_name(), [self.final_bn] if self.final_bn else []),
                   ('linear', [self.fc])])
