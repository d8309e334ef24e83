"""VGG with batch norm for 32x32 images: the usual deep plain baseline on CIFAR.

Simonyan & Zisserman 2015 configurations A, B, D and E (VGG-11/13/16/19), each 3x3
conv followed by BN -> ReLU, 2x2 max-pooling between stages. After five poolings a
32x32 image is 1x1x512, and one linear layer replaces the ImageNet classifier
(the CIFAR adaptation the public implementations use; 9.2M/9.4M/14.7M/20.0M
parameters with a 10-class head).
"""

import tensorflow as tf

# Filters of the convs of each stage; a stage ends with a 2x2 max-pool.
CONFIGS = {
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


class VGG(tf.Module):
    """A VGG-BN net; call it on mean-subtracted images [B, 32, 32, 3] for float32 logits."""

    def __init__(self, depth, make, num_classes=10, compute_dtype=tf.float32, name='vgg'):
        super().__init__(name=name)
        self.compute_dtype = compute_dtype
        channels = 3
        with self.name_scope:
            self.stages = []
            for s, widths in enumerate(CONFIGS[depth]):
                stage = []
                for c, width in enumerate(widths):
                    stage.append((make.conv(channels, width, 3, 1,
                                            name='conv%d_%d' % (s + 1, c + 1)),
                                  make.norm(width, name='bn%d_%d' % (s + 1, c + 1))))
                    channels = width
                self.stages.append(stage)
            self.fc = make.dense(channels, num_classes, name='fc')

    def __call__(self, images, training=False, trace=None):
        x = tf.cast(images, self.compute_dtype)
        for s, stage in enumerate(self.stages):
            for conv, bn in stage:
                x = bn.with_relu(conv(x), training)
            x = tf.nn.max_pool2d(x, 2, 2, padding='VALID')
            if trace is not None:
                trace.append(('stage %d' % (s + 1), tuple(x.shape)))
        x = tf.reshape(x, [-1, x.shape[1] * x.shape[2] * x.shape[3]])
        logits = tf.cast(self.fc(x), tf.float32)
        if trace is not None:
            trace.append(('linear', tuple(logits.shape)))
        return logits

    def parts(self):
        return ([('stage %d' % (s + 1), [m for pair in stage for m in pair])
                 for s, stage in enumerate(self.stages)] + [('linear', [self.fc])])
