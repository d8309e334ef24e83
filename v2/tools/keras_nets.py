"""The CIFAR ResNets written with Keras 3 layers, as a user of Keras would: baselines and checks.

The benchmark times `model.fit` of the pre-activation net against our trainer; the
figure6 experiment's --reference trains the post-activation and plain nets of He
et al. 2015 through `model.fit`, so that a reader can see that a finding is not an
artefact of our hand-built graph. The nets match ours layer for layer: He-normal
(untruncated) convolutions without bias, batch norm with momentum 0.9 and epsilon
1e-5, option A shortcuts, strided convolutions padded by one pixel on every side,
L2 weight decay wd * ||w||^2 / 2 on the conv and linear kernels.

One difference remains: Keras's SGD applies momentum as v = m*v - lr*g, w += v,
where TensorFlow's kernel (ours) keeps accum = m*accum + g, w -= lr*accum. The two
agree while the rate is constant and differ for a few steps after it changes.
"""

import keras
from keras import layers as L

from v2.data import cifar, pipeline
from v2.nets import model

HE_NORMAL = keras.initializers.VarianceScaling(2.0, 'fan_in', 'untruncated_normal')


def network(config: model.ModelConfig, weight_decay: float = 1e-4) -> keras.Model:
    """A Keras functional model of a basic-unit CIFAR ResNet (v1 or v2) or its plain twin."""
    n = model.units_per_stage(config)
    l2 = keras.regularizers.L2(weight_decay / 2)      # our decay: wd * ||w||^2 / 2

    def conv(x, width, stride):
        if stride > 1:                                # Torch's padding of 1, as in v2.nets
            x = L.ZeroPadding2D(((1, 0), (1, 0)))(x)
        return L.Conv2D(width, 3, stride, padding='same' if stride == 1 else 'valid',
                        use_bias=False, kernel_initializer=HE_NORMAL, kernel_regularizer=l2)(x)

    def bn(x):
        return L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)

    def shortcut(x, width, stride):
        if stride > 1:
            x = (L.AveragePooling2D(stride)(x) if config.shortcut_type == 'A'
                 else L.Lambda(lambda t: t[:, ::2, ::2, :])(x))
        extra = width - x.shape[-1]
        if extra:
            x = L.Lambda(lambda t, e=extra: keras.ops.pad(
                t, [[0, 0], [0, 0], [0, 0], [e // 2, e - e // 2]]))(x)
        return x

    residual = config.shortcut_connections
    inputs = keras.Input((cifar.IMAGE_SIZE, cifar.IMAGE_SIZE, cifar.CHANNELS))
    x = conv(inputs, model.CIFAR_WIDTHS[0], 1)
    if config.resnet_version == 1:
        x = L.ReLU()(bn(x))
    for s, width in enumerate(model.CIFAR_WIDTHS):
        for u in range(n):
            stride = 2 if (s > 0 and u == 0) else 1
            if config.resnet_version == 1:            # He et al. 2015, Figure 2
                y = bn(conv(L.ReLU()(bn(conv(x, width, stride))), width, 1))
                x = L.ReLU()(L.Add()([y, shortcut(x, width, stride)]) if residual else y)
            else:                                     # He et al. 2016, Figure 4(e)
                preact = L.ReLU()(bn(x))
                y = conv(L.ReLU()(bn(conv(preact, width, stride))), width, 1)
                source = preact if (s == 0 and u == 0) else x
                x = L.Add()([y, shortcut(source, width, stride)]) if residual else y
    if config.resnet_version == 2:
        x = L.ReLU()(bn(x))
    x = L.GlobalAveragePooling2D()(x)
    limit = 1.0 / x.shape[-1] ** 0.5
    outputs = L.Dense(config.num_classes, kernel_regularizer=l2, dtype='float32',
                      kernel_initializer=keras.initializers.RandomUniform(-limit, limit))(x)
    return keras.Model(inputs, outputs)


def with_augmentation(net: keras.Model, mean, seed: int = 0) -> keras.Model:
    """`net` behind Keras's preprocessing layers, as a Keras user augments on a GPU: uint8
    images in; the mean image subtracted, 4-pixel zero padding, a random 32x32 crop and
    a random horizontal flip (training only), all inside the model, on its device."""
    inputs = keras.Input((cifar.IMAGE_SIZE, cifar.IMAGE_SIZE, cifar.CHANNELS), dtype='uint8')
    x = L.Lambda(lambda t: keras.ops.cast(t, 'float32') - mean)(inputs)
    x = L.ZeroPadding2D(4)(x)
    x = L.RandomCrop(cifar.IMAGE_SIZE, cifar.IMAGE_SIZE, seed=seed)(x)
    x = L.RandomFlip('horizontal', seed=seed)(x)
    return keras.Model(inputs, net(x))


class Rate(keras.optimizers.schedules.LearningRateSchedule):
    """Our Schedule as a Keras learning-rate schedule (Keras counts steps from 0, as we do)."""

    def __init__(self, schedule):
        self.schedule = schedule

    def __call__(self, step):
        return self.schedule(step)


def set_precision(precision: str):
    """Keras's global dtype policy for one of our precisions."""
    keras.mixed_precision.set_global_policy(
        'mixed_bfloat16' if precision == 'bfloat16' else
        'mixed_float16' if precision == 'float16' else 'float32')


def compile_for(net, recipe, jit_compile=False):
    net.compile(optimizer=keras.optimizers.SGD(Rate(recipe.schedule), momentum=recipe.momentum,
                                               nesterov=recipe.nesterov),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'], jit_compile=jit_compile)
    return net


def fit_reference(config, recipe, data_path, record_every, on_record, out=print):
    """Trains the Keras net with the recipe on our batches; records like the trainer.

    on_record(step, 'train', {error inputs}) receives the means of each window of
    record_every steps (Keras's epoch logs, with one epoch per window), and
    on_record(step, 'test', ...) the test set's figures at the same steps.
    """
    keras.utils.set_random_seed(recipe.seed)
    set_precision(recipe.precision)
    try:
        net = compile_for(network(config, recipe.weight_decay), recipe)
        images, labels = cifar.load_split(data_path, cifar.CIFAR10, 'train')
        test_images, test_labels = cifar.load_split(data_path, cifar.CIFAR10, 'test')
        mean = cifar.pixel_mean(images)
        batches = pipeline.augmented_batches(images, labels, mean, recipe.batch_size,
                                             recipe.seed, 0, recipe.num_iterations)
        test = pipeline.eval_batches(test_images, test_labels, 500).map(
            lambda x, y: (pipeline.normalize(x, mean), y))

        class Record(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                step = (epoch + 1) * record_every
                on_record(step, 'train', {'accuracy': logs['accuracy'], 'cross_entropy':
                                          logs['loss']})
                loss, accuracy = net.evaluate(test, verbose=0)[:2]
                on_record(step, 'test', {'accuracy': accuracy, 'cross_entropy': loss})
                out('step %d/%d  loss %.4f  accuracy %.3f  test accuracy %.2f%%'
                    % (step, recipe.num_iterations, logs['loss'], logs['accuracy'],
                       100 * accuracy))

        net.fit(batches, epochs=recipe.num_iterations // record_every,
                steps_per_epoch=record_every, shuffle=False, verbose=0, callbacks=[Record()])
    finally:
        set_precision('float32')
