"""CIFAR-10/100 binary records: the data sets, file checks, decoding, the pixel mean.

The official binary layouts (https://www.cs.toronto.edu/~kriz/cifar.html): a
CIFAR-10 record is 1 label byte followed by 3072 pixel bytes, channel-major (1024
red, 1024 green, 1024 blue, each a 32x32 row-major plane); a CIFAR-100 record is 1
coarse label byte, 1 fine label byte, then the same 3072 pixel bytes.

Every file is checked before anything is read, and a whole split (150 MB as uint8
for CIFAR-10's training set) is read once through tf.data into memory.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

from v2.errors import UserError

IMAGE_SIZE = 32
CHANNELS = 3
IMAGE_BYTES = IMAGE_SIZE * IMAGE_SIZE * CHANNELS

CIFAR10_CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer',
                   'dog', 'frog', 'horse', 'ship', 'truck')
CIFAR100_CLASSES = tuple("""apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle
    bowl boy bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock
    cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl
    hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree
    motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck
    pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal
    shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower sweet_pepper
    table tank telephone television tiger tractor train trout tulip turtle wardrobe whale
    willow_tree wolf woman worm""".split())
CIFAR100_SUPERCLASSES = tuple("""aquatic_mammals fish flowers food_containers
    fruit_and_vegetables household_electrical_devices household_furniture insects
    large_carnivores large_man-made_outdoor_things large_natural_outdoor_scenes
    large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people reptiles
    small_mammals trees vehicles_1 vehicles_2""".split())


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """One labelled CIFAR variant: its files, record layout and classes."""
    name: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int              # label bytes before the pixels of each record
    label_index: int              # which of them is the label used
    class_names: tuple[str, ...]
    folder: str                   # what the official archive extracts to
    archive: str

    @property
    def record_bytes(self):
        return self.label_bytes + IMAGE_BYTES

    @property
    def num_classes(self):
        return len(self.class_names)


DATASETS = {
    'cifar10': DatasetSpec('cifar10', tuple('data_batch_%d.bin' % i for i in range(1, 6)),
                           ('test_batch.bin',), 1, 0, CIFAR10_CLASSES,
                           'cifar-10-batches-bin', 'cifar-10-binary.tar.gz'),
    'cifar100': DatasetSpec('cifar100', ('train.bin',), ('test.bin',), 2, 1, CIFAR100_CLASSES,
                            'cifar-100-binary', 'cifar-100-binary.tar.gz'),
    'cifar100_coarse': DatasetSpec('cifar100_coarse', ('train.bin',), ('test.bin',), 2, 0,
                                   CIFAR100_SUPERCLASSES, 'cifar-100-binary',
                                   'cifar-100-binary.tar.gz'),
}
CIFAR10 = DATASETS['cifar10']
# The record layout of CIFAR-10, for readers of the format.
RECORD_BYTES = CIFAR10.record_bytes
# The official CIFAR-10 archive names its classes in this file, one a line; a folder made
# from your own images (v2.data.convert) does too, with its own names.
LABEL_NAMES = 'batches.meta.txt'
OWN = 'own'        # the data set of such a folder: CIFAR-10's files, its own classes


def read_label_names(data_path):
    """The class names of data_path's batches.meta.txt, or None where it has none."""
    path = os.path.join(data_path, LABEL_NAMES)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding='utf-8') as f:
            names = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise UserError('%s: cannot be read (%s)' % (path, getattr(e, 'strerror', None) or e)
                        ) from None
    while names and not names[-1]:
        names.pop()
    if len(names) < 2 or not all(names) or len(set(names)) < len(names):
        raise UserError('%s: expected two or more different class names, one a line'
                        % path)
    return tuple(names)


def dataset_of(dataset, data_path):
    """The data set a folder holds: `own` where it holds CIFAR-10's files with class names
    other than CIFAR-10's (a folder of your own images, converted); else `dataset`."""
    if dataset != 'cifar10' or not data_path or not os.path.isdir(data_path):
        return dataset
    names = read_label_names(data_path)
    return OWN if names is not None and names != CIFAR10_CLASSES else dataset


def spec_of(dataset, data_path=None, num_classes=None):
    """The DatasetSpec of a data set; for `own`, read from data_path's label names (and,
    with num_classes, checked against the network's)."""
    if dataset != OWN:
        return DATASETS[dataset]
    if not data_path:
        raise UserError('--data_path: a network trained on your own images needs the folder '
                        'they were converted into (for its %s)' % LABEL_NAMES,
                        settings=('data_path',))
    names = read_label_names(data_path)
    if names is None:
        raise UserError('data_path=%s: no %s naming the classes; convert your images with '
                        'python -m v2.cli.convert' % (data_path, LABEL_NAMES),
                        settings=('data_path',))
    if num_classes is not None and len(names) != num_classes:
        raise UserError('%s names %d classes, but the network has %d'
                        % (os.path.join(data_path, LABEL_NAMES), len(names), num_classes))
    return dataclasses.replace(CIFAR10, name=OWN, class_names=names, folder=data_path,
                               archive='')


def get_hint(spec):
    return ('add download to fetch it, or download the binary version (%s) from '
            'https://www.cs.toronto.edu/~kriz/cifar.html and extract it' % spec.archive)


def _missing(message, *values):
    return UserError(message % values, settings=('data_path', 'download'))


def check_files(data_path: str, names, spec: DatasetSpec = CIFAR10) -> list[str]:
    """Checks that every named file exists, is readable and holds whole records.

    Returns the full paths. Raises UserError naming the first bad file and what is
    wrong with it, before anything is trained or written. Labels are checked after
    reading, by check_labels.
    """
    if not os.path.exists(data_path):
        raise _missing('data_path=%s: no such folder; %s', data_path, get_hint(spec))
    if not os.path.isdir(data_path):
        raise _missing('data_path=%s is a file; it must be the folder holding %s', data_path,
                       ', '.join(names))
    missing = [n for n in names if not os.path.exists(os.path.join(data_path, n))]
    if missing:
        raise _missing('data_path=%s: missing %s; %s', data_path, ', '.join(missing),
                       get_hint(spec))
    paths = [os.path.join(data_path, name) for name in names]
    for path in paths:
        try:
            with open(path, 'rb'):
                pass
        except OSError as e:
            raise UserError('%s: cannot be read (%s)' % (path, e.strerror or e)) from None
        check_size(os.path.getsize(path), path, spec.record_bytes)
    return paths


def check_size(num_bytes, where, record_bytes=RECORD_BYTES):
    """Raises UserError unless num_bytes is a positive whole number of records."""
    if num_bytes == 0:
        raise UserError('%s: the file is empty' % where)
    if num_bytes % record_bytes:
        raise UserError('%s: %d bytes is not a multiple of the %d-byte record'
                        % (where, num_bytes, record_bytes))


def check_labels(labels, where, num_classes=CIFAR10.num_classes):
    """Raises UserError naming the first record whose label is not a class index."""
    labels = np.asarray(labels)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise UserError('%s: record %d has label %d; labels must be 0-%d'
                        % (where, bad[0], labels[bad[0]], num_classes - 1))


def decode_records(raw, spec=CIFAR10):
    """Decodes a batch of raw record strings into (uint8 NHWC images, int32 labels)."""
    record = tf.io.decode_raw(raw, tf.uint8)                      # [B, record_bytes]
    labels = tf.cast(record[:, spec.label_index], tf.int32)
    planes = tf.reshape(record[:, spec.label_bytes:], [-1, CHANNELS, IMAGE_SIZE, IMAGE_SIZE])
    return tf.transpose(planes, [0, 2, 3, 1]), labels              # CHW -> HWC


def read_records(paths, spec=CIFAR10):
    """Reads whole record files through tf.data into two in-memory tensors.

    Returns (images uint8 [N, 32, 32, 3], labels int32 [N]) in file order. All the
    records are decoded as one batch (their number is known from the file sizes),
    so the set is held once, not once per chunk and again concatenated.
    """
    count = sum(os.path.getsize(p) for p in paths) // spec.record_bytes
    return (tf.data.FixedLengthRecordDataset([str(p) for p in paths], spec.record_bytes)
            .batch(count)
            .map(lambda raw: decode_records(raw, spec))
            .get_single_element())


def load(data_path: str, names, spec: DatasetSpec = CIFAR10) -> tuple[tf.Tensor, tf.Tensor]:
    """Checks the named files of `data_path`, reads them and checks their labels.

    Returns (images uint8 [N, 32, 32, 3], labels int32 [N]); see read_records.
    """
    paths = check_files(data_path, names, spec)
    images, labels = read_records(paths, spec)
    start = 0
    for path in paths:
        count = os.path.getsize(path) // spec.record_bytes
        check_labels(labels[start:start + count], path, spec.num_classes)
        start += count
    return images, labels


def load_split(data_path: str, spec: DatasetSpec, split: str) -> tuple[tf.Tensor, tf.Tensor]:
    """The 'train' or 'test' files of a data set; see load."""
    return load(data_path, spec.train_files if split == 'train' else spec.test_files, spec)


def hold_out(images, labels, count, data_path=''):
    """(training part, validation part): the last `count` images are held out.

    He et al. 2015 (section 4.2) held out 5k of the 50k training images for their
    analysis. The split is by position in the files, so it is the same in every run
    and on every resume; the validation images are never trained on, and the pixel
    mean is computed from the training part alone.
    """
    if not count:
        return (images, labels), None
    with tf.device('/cpu:0'):        # the set stays in host memory, where tf.data reads it
        return _split(images, labels, count, data_path)


def _split(images, labels, count, data_path):
    if count >= int(images.shape[0]):
        raise UserError('validation_split=%d holds out every one of the %d training images in %s'
                        % (count, images.shape[0], data_path), settings=('validation_split',))
    keep = int(images.shape[0]) - count
    return (images[:keep], labels[:keep]), (images[keep:], labels[keep:])


def pixel_mean(images) -> np.ndarray:
    """Per-pixel mean [32, 32, 3] of uint8 images, as subtracted in He et al. 2015.

    numpy accumulates in float64 chunk by chunk; casting the whole set to float64
    first would hold 1.2 GB for CIFAR-10.
    """
    return np.mean(np.asarray(images), axis=0, dtype=np.float64).astype(np.float32)
