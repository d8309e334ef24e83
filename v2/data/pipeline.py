"""The input pipelines: training batches keyed by (seed, step), and evaluation batches.

The training set is held in memory as uint8. The pipeline only draws each step's
batch (a gather of uint8 images and their labels); prepare_batch then normalises
and augments it inside the training step, on the GPU that trains, so only uint8
bytes (a quarter of float32's) cross from the host. A run on one CPU has
augmented_batches do the same in tf.data's threads, beside the step. The order of every
epoch and the augmentation of every batch are pure functions of (seed, step), so
a run resumed at step k sees exactly the batches it would have seen without the
interruption.
"""

import dataclasses

import tensorflow as tf

from v2.data.cifar import IMAGE_SIZE
from v2.errors import UserError

# He et al. 2015, section 4.2: "4 pixels are padded on each side, and a 32x32
# crop is randomly sampled from the padded image or its horizontal flip".
PAD = 4
# The random-number algorithm of every draw. TensorFlow's default, 'auto_select', picks
# by device: Philox on CPUs, another under XLA or on GPUs. Named, the same (seed, step)
# gives the same batch on every device, so a run can move between them.
RNG = 'philox'


def normalize(images, mean):
    """uint8 images -> float32 with the per-pixel training-set mean subtracted."""
    return tf.cast(images, tf.float32) - mean


def step_key(seed, step):
    """The stateless RNG key [2] of one training step's augmentation."""
    return tf.stack([tf.cast(seed, tf.int64), tf.cast(step, tf.int64)])


def augment(images, key, first=0, total=None):
    """Pads 4 zero pixels, crops a random 32x32 window and flips half at random.

    `images` is a normalised float batch [B, 32, 32, 3], so the zero padding is the
    mean pixel. The crop and flip are two batched gathers; `key` is a stateless RNG
    key [2], so the same key always gives the same augmentation. `images` may be
    rows first..first+B of a batch of `total` images (one replica's share): the
    random draws are those of the whole batch, so the share is augmented exactly as
    it would be on one device.
    """
    batch = tf.shape(images)[0]
    total = batch if total is None else total
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2, alg=RNG))
    offsets = tf.random.stateless_uniform([total, 2], crop_key, minval=0, maxval=2 * PAD + 1,
                                          dtype=tf.int32, alg=RNG)[first:first + batch]
    flip = tf.random.stateless_uniform([total, 1], flip_key, minval=0, maxval=2,
                                       dtype=tf.int32, alg=RNG)[first:first + batch] > 0
    padded = tf.pad(images, [[0, 0], [PAD, PAD], [PAD, PAD], [0, 0]])
    span = tf.range(IMAGE_SIZE)
    rows = offsets[:, :1] + span                                               # [B, 32]
    cols = offsets[:, 1:] + tf.where(flip, IMAGE_SIZE - 1 - span, span)       # [B, 32]
    cropped = tf.gather(padded, rows, axis=1, batch_dims=1)                    # [B, 32, 40, C]
    return tf.gather(cropped, cols, axis=2, batch_dims=1)                      # [B, 32, 32, C]


def cutout(images, key, size, first=0, total=None):
    """Zeroes one size x size square of each image, centred anywhere on it.

    DeVries & Taylor 2017 ("Improved Regularization of Convolutional Neural Networks
    with Cutout"): the square may reach over the border, so less of it may show;
    zero is the mean pixel of normalised images. Its key is derived from the step's,
    so the crop and flip stay those of a run without cutout. `first`/`total` as in
    augment.
    """
    batch = tf.shape(images)[0]
    total = batch if total is None else total
    centres = tf.random.stateless_uniform(
        [total, 2], tf.random.experimental.stateless_fold_in(key, 1, alg=RNG), minval=0,
        maxval=IMAGE_SIZE, dtype=tf.int32, alg=RNG)[first:first + batch]
    span = tf.range(IMAGE_SIZE)
    low = centres - size // 2
    inside_rows = (span >= low[:, :1]) & (span < low[:, :1] + size)            # [B, 32]
    inside_cols = (span >= low[:, 1:]) & (span < low[:, 1:] + size)           # [B, 32]
    keep = ~(inside_rows[:, :, None] & inside_cols[:, None, :])               # [B, 32, 32]
    return images * tf.cast(keep, images.dtype)[..., None]


@dataclasses.dataclass(frozen=True)
class Mixing:
    """mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) of a recipe; off at zeros.

    With both on, each batch is CutMix with probability cutmix_prob and mixup otherwise;
    with CutMix alone, a batch is cut with probability cutmix_prob and left as it is
    otherwise.
    """
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_prob: float = 1.0

    def __bool__(self):
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def uniform(shape, key):
    """Uniform floats in (0, 1) from 24 random bits each. Philox's integers are the same with
    and without XLA, its floats are not: made from integers, a draw is the same everywhere."""
    bits = tf.random.stateless_uniform(shape, key, minval=0, maxval=2 ** 24, dtype=tf.int32,
                                       alg=RNG)
    return (tf.cast(bits, tf.float32) + 0.5) / 2 ** 24


def beta_quantile(u, alpha, iterations=40):
    """The quantile u of Beta(alpha, alpha), by bisection on the regularised incomplete beta
    function: a draw is a pure function of its Philox uniform u, on every device."""
    def halve(i, low, high):              # 2**-40: far below float32's resolution near 0.5
        middle = (low + high) / 2
        below = tf.math.betainc(alpha, alpha, middle) < u
        return i + 1, tf.where(below, middle, low), tf.where(below, high, middle)
    _, low, high = tf.while_loop(lambda i, low, high: i < iterations, halve,
                                 (tf.constant(0), tf.zeros_like(u), tf.ones_like(u)))
    return (low + high) / 2


def cutmix_box(lam, centre):
    """Yun et al. 2019's box for the mixing ratio lam: sides of 32 * sqrt(1 - lam) pixels
    (rounded down) around `centre` [row, column], clipped to the image; [y0, y1, x0, x1]."""
    side = tf.cast(IMAGE_SIZE * tf.sqrt(1.0 - lam), tf.int32)
    low = tf.clip_by_value(centre - side // 2, 0, IMAGE_SIZE)
    high = tf.clip_by_value(centre + side // 2, 0, IMAGE_SIZE)
    return tf.stack([low[0], high[0], low[1], high[1]])


def mix_draws(key, mixing: Mixing, batch, first=0):
    """One batch's mixing: (lam drawn, whether it is CutMix, CutMix's box, the partner of
    each image), all from the step's key, so a resumed run mixes as an uninterrupted one.
    The partners are a permutation of the `batch` images from row `first` (one replica's
    share: each replica mixes within its own images, as per-GPU mixup does)."""
    mix_key = tf.random.experimental.stateless_fold_in(key, 2, alg=RNG)
    lam_key, choice_key, box_key, order_key = tf.unstack(
        tf.random.experimental.stateless_split(mix_key, 4, alg=RNG))
    choice = uniform([], choice_key)
    if mixing.cutmix_alpha > 0:
        cut = choice < mixing.cutmix_prob
        mixes = cut | (mixing.mixup_alpha > 0)
    else:
        cut, mixes = tf.constant(False), tf.constant(True)
    alpha = tf.where(cut, float(mixing.cutmix_alpha), float(mixing.mixup_alpha))
    lam = tf.where(mixes, beta_quantile(uniform([], lam_key), tf.maximum(alpha, 1e-3)), 1.0)
    centre = tf.random.stateless_uniform([2], box_key, minval=0, maxval=IMAGE_SIZE,
                                         dtype=tf.int32, alg=RNG)
    # A permutation as the order of uniform draws: XLA compiles a sort, not a shuffle.
    partners = tf.argsort(tf.random.stateless_uniform(
        [batch], tf.random.experimental.stateless_fold_in(order_key, first, alg=RNG),
        minval=0, maxval=2 ** 30, dtype=tf.int32, alg=RNG), stable=True)
    return lam, cut, cutmix_box(lam, centre), partners


def mix(images, labels, num_classes, key, mixing: Mixing, first=0):
    """A prepared batch mixed with its partners: (images, float32 targets [B, classes]).

    mixup: lam * x + (1 - lam) * x[partners], the labels mixed the same way. CutMix: the
    partner's pixels pasted into the box, the labels weighted by the box's actual area
    after clipping, 1 - area / 1024. The same box serves the whole batch (Yun et al.).
    """
    lam, cut, box, partners = mix_draws(key, mixing, tf.shape(images)[0], first)
    partner = tf.gather(images, partners)
    span = tf.range(IMAGE_SIZE)
    inside = (((span >= box[0]) & (span < box[1]))[:, None]
              & ((span >= box[2]) & (span < box[3]))[None, :])            # [32, 32]
    area = tf.cast((box[1] - box[0]) * (box[3] - box[2]), tf.float32)
    weight = tf.where(cut, 1.0 - area / IMAGE_SIZE ** 2, lam)
    mixed = tf.where(cut, tf.where(inside[None, :, :, None], partner, images),
                     lam * images + (1.0 - lam) * partner)
    one_hot = tf.one_hot(labels, num_classes)
    return mixed, weight * one_hot + (1.0 - weight) * tf.gather(one_hot, partners)


def prepare_batch(images, mean, key, first=0, total=None, cutout_size=0):
    """A training batch as the step sees it: uint8 -> normalised, augmented float32."""
    batch = augment(normalize(images, mean), key, first, total)
    return cutout(batch, key, cutout_size, first, total) if cutout_size else batch


def epoch_order(num_examples, seed, epoch):
    """The shuffled example order of one epoch: a pure function of (seed, epoch)."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(num_examples), seed=tf.stack([tf.cast(seed, tf.int64), epoch]), alg=RNG)


def train_batches(images, labels, batch_size: int, seed: int, start_step: int,
                  num_steps: int) -> tf.data.Dataset:
    """The uint8 batches of steps start_step .. num_steps-1, not yet augmented.

    Each epoch is a fresh shuffle of the whole set, cut into whole batches (the
    remainder of an epoch is dropped, as every step needs a full batch); the
    batch of step s is the same however the run was interrupted and resumed.
    Yields (uint8 images [B, 32, 32, 3], int32 labels [B]); the step normalises
    and augments them with prepare_batch and the key step_key(seed, s).
    """
    num_examples = int(images.shape[0])
    steps_per_epoch = num_examples // batch_size
    if steps_per_epoch == 0:
        raise UserError('batch_size=%d is larger than the %d training images'
                        % (batch_size, num_examples), settings=('batch_size',))
    first_epoch = start_step // steps_per_epoch
    last_epoch = (max(num_steps, 1) - 1) // steps_per_epoch + 1

    def epoch_batches(epoch):
        order = epoch_order(num_examples, seed, epoch)[:steps_per_epoch * batch_size]
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [steps_per_epoch, batch_size]))

    def gather(indices):
        return tf.gather(images, indices), tf.gather(labels, indices)

    return (tf.data.Dataset.range(first_epoch, last_epoch)
            .flat_map(epoch_batches)
            .skip(start_step - first_epoch * steps_per_epoch)
            .take(num_steps - start_step)
            .map(gather, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def augmented_batches(images, labels, mean, batch_size, seed, start_step, num_steps,
                      cutout_size=0, mixing=Mixing(), num_classes=None):
    """train_batches prepared on the host: float32 batches as the training step sees them.

    What a one-CPU training run feeds its step (tf.data's threads work beside it), and
    what code that takes ready batches uses (a Keras model's fit, the tests). On a GPU,
    and under a distribution strategy, the step prepares each batch itself. With mixing
    the labels come as the mixed targets [B, num_classes].
    """
    steps = tf.data.Dataset.range(start_step, num_steps)
    batches = train_batches(images, labels, batch_size, seed, start_step, num_steps)
    mean = tf.constant(mean)

    def prepare(step, batch):
        key = step_key(seed, step)
        prepared = prepare_batch(batch[0], mean, key, cutout_size=cutout_size)
        if mixing:
            return mix(prepared, batch[1], num_classes, key, mixing)
        return prepared, batch[1]
    return (tf.data.Dataset.zip((steps, batches))
            .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .prefetch(tf.data.AUTOTUNE))


def eval_batches(images, labels, batch_size: int) -> tf.data.Dataset:
    """The whole evaluation set in order, uint8, in batches of at most batch_size.

    tf.data's autotuning is off here. Every evaluation starts a new iterator, and on a
    CPU of few cores the autotuner's start-up then competes with the model for it
    (docs/performance.md, "Why the code is as it is"). Slicing a batch costs far less
    than the model, so one batch prepared ahead is enough.
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return (tf.data.Dataset.from_tensor_slices((images, labels))
            .batch(batch_size)
            .prefetch(1)
            .with_options(options))
