"""A run's data: the checked images, the pixel mean, the evaluation set, the batches.

The training batches are a function of (seed, step), so a resumed run takes exactly
the batches an uninterrupted one would. They are uint8, prepared (normalised,
cropped, flipped, cut out) inside the step on the device, or, on one CPU, prepared by
tf.data's threads on the host, where they overlap with the step (the benchmark's
"input pipeline cost"; docs/performance.md). Both give the same batches
(tests/test_train.py).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from v2.data import cifar, pipeline
from v2.errors import UserError


@dataclasses.dataclass
class TrainingData:
    """The checked images of a run: uint8 training part, held-out part, test set, pixel mean."""
    images: tf.Tensor
    labels: tf.Tensor
    mean: np.ndarray
    evaluation: tuple | None = None        # (images, labels) evaluated every eval_every
    evaluation_split: str = 'test'            # or 'validation'


def load_training_data(model_config, recipe, data_path, evaluate=False):
    """The checked training set (at least one batch), its pixel mean and the evaluation set.

    With recipe.validation_split the last images are held out: they are what
    eval_every evaluates, and the mean comes from the rest alone.
    """
    spec = cifar.spec_of(model_config.dataset, data_path, model_config.num_classes)
    images, labels = cifar.load_split(data_path, spec, 'train')
    (images, labels), held_out = cifar.hold_out(images, labels, recipe.validation_split, data_path)
    if recipe.batch_size > images.shape[0]:
        raise UserError('batch_size=%d is larger than the %d training images in %s'
                        % (recipe.batch_size, images.shape[0], data_path),
                        settings=('batch_size',))
    data = TrainingData(images, labels, cifar.pixel_mean(images))
    if held_out is not None:
        data.evaluation, data.evaluation_split = held_out, 'validation'
    elif evaluate:
        data.evaluation = cifar.load_split(data_path, spec, 'test')
    return data


def prepares_on_host(prepare_batches, on_gpu, cluster):
    """Whether the batches are prepared by tf.data on the host (see RunOptions)."""
    if prepare_batches == 'host' and cluster.distributed:
        raise UserError('prepare_batches=host: only one-device runs prepare their batches on '
                        'the host; drop it, or use device', settings=('prepare_batches',))
    if prepare_batches == 'auto':
        return not on_gpu and not cluster.distributed
    return prepare_batches == 'host'


def training_batches(data, recipe, start, on_host, mean, num_classes=None):
    """The run's global batches from step `start`: uint8, or, on_host, prepared float32
    (with mixup or CutMix, their targets [B, num_classes] for labels)."""
    if on_host:
        return pipeline.augmented_batches(data.images, data.labels, mean, recipe.batch_size,
                                          recipe.seed, start, recipe.num_iterations,
                                          recipe.cutout, recipe.mixing, num_classes)
    return pipeline.train_batches(data.images, data.labels, recipe.batch_size, recipe.seed,
                                  start, recipe.num_iterations)


def dry_run(model_config, recipe, data_path, out=print, data=None):
    """Checks the data (unless `data` is the checked TrainingData) and builds the input
    pipeline without training; prints what it found."""
    data = data or load_training_data(model_config, recipe, data_path)
    batches = pipeline.train_batches(data.images, data.labels, recipe.batch_size, recipe.seed,
                                     0, recipe.num_iterations)
    batch_images, _ = next(iter(batches))
    out('input pipeline: %d training images in %s, %d steps per epoch, batches of %s; '
        'dry run: nothing trained or written'
        % (data.images.shape[0], data_path, data.images.shape[0] // recipe.batch_size,
           'x'.join(str(d) for d in batch_images.shape)))
