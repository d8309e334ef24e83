"""Your own images as a CIFAR data set: class-named folders of PNG/JPEG files -> CIFAR-10's
binary files and the class names, which the trainer and the evaluator then read as they
read CIFAR-10 (v2.data.cifar, data set `own`).

  images/cat/001.jpg, images/cat/002.png, images/dog/...   (or images/train/<class>/...
                                                            and images/test/<class>/...)
  -> data_batch_1.bin ... data_batch_5.bin, test_batch.bin, batches.meta.txt

Each image is decoded by TensorFlow (PNG or JPEG; greyscale and alpha become RGB) and
resized whole to 32x32, its aspect ratio not kept, by area averaging (tf.image.resize,
method='area': when shrinking, each output pixel is the mean of the input pixels it
covers; a smaller image has its pixels repeated), then rounded to uint8. Classes are
numbered in the sorted order of their folder names. Without train/ and test/ folders, a
fixed share of each class is held out as the test set; the training records are
shuffled once (seed 0), so that the last images, which --validation_split holds out,
are a sample of every class, and split into five files as CIFAR-10's are. Everything
is decoded and checked before anything is written, and the files appear together or
not at all.
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from v2.data import cifar
from v2.errors import UserError

EXTENSIONS = ('.png', '.jpg', '.jpeg')
TRAIN_FILES = cifar.CIFAR10.train_files
TEST_FILE = cifar.CIFAR10.test_files[0]


@tf.function(input_signature=[tf.TensorSpec([], tf.string)])
def _decode(raw):
    image = tf.io.decode_image(raw, channels=3, expand_animations=False)
    small = tf.image.resize(image, [cifar.IMAGE_SIZE, cifar.IMAGE_SIZE], method='area')
    return tf.cast(tf.round(tf.clip_by_value(small, 0.0, 255.0)), tf.uint8)


def class_folders(folder, where='image_folder'):
    """{class name: [image paths, sorted]} of a folder of class-named folders."""
    if not os.path.isdir(folder):
        raise UserError('%s=%s: no such folder' % (where, folder), settings=(where,))
    names = sorted(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n))
                   and not n.startswith('.'))
    if not names:
        raise UserError('%s=%s holds no class folders (one folder of images per class)'
                        % (where, folder), settings=(where,))
    seen = {}
    for name in names:
        if name.lower() in seen:
            raise UserError('%s=%s: the class folders %s and %s differ only in case'
                            % (where, folder, seen[name.lower()], name), settings=(where,))
        seen[name.lower()] = name
    classes = {}
    for name in names:
        path = os.path.join(folder, name)
        classes[name] = sorted(os.path.join(path, f) for f in os.listdir(path)
                               if f.lower().endswith(EXTENSIONS)
                               and os.path.isfile(os.path.join(path, f)))
        if not classes[name]:
            raise UserError('%s: the class %s has no PNG or JPEG images' % (path, name),
                            settings=(where,))
    return classes


def layout(image_folder, test_fraction):
    """(class names, [(path, label)] training, [(path, label)] test) of the folder."""
    parts = [n for n in ('train', 'test') if os.path.isdir(os.path.join(image_folder, n))]
    if parts == ['train', 'test']:
        train = class_folders(os.path.join(image_folder, 'train'))
        test = class_folders(os.path.join(image_folder, 'test'))
        if sorted(train) != sorted(test):
            raise UserError('image_folder=%s: train/ has the classes %s, test/ has %s; they '
                            'must be the same' % (image_folder, ', '.join(train),
                                                  ', '.join(test)),
                            settings=('image_folder',))
        names = sorted(train)
        return (names, [(p, i) for i, n in enumerate(names) for p in train[n]],
                [(p, i) for i, n in enumerate(names) for p in test[n]])
    if not 0 < test_fraction < 1:
        raise UserError('test_fraction=%g: must be between 0 and 1 (or give train/ and test/ '
                        'folders)' % test_fraction, settings=('test_fraction',))
    classes = class_folders(image_folder)
    names = sorted(classes)
    train, test = [], []
    rng = np.random.RandomState(0)
    for label, name in enumerate(names):
        paths = classes[name]
        held = int(round(len(paths) * test_fraction))
        if held < 1 or held >= len(paths):
            raise UserError('%s: the class %s has %d images, too few to give both training '
                            'and test images at test_fraction=%g'
                            % (os.path.join(image_folder, name), name, len(paths),
                               test_fraction), settings=('test_fraction',))
        order = rng.permutation(len(paths))
        test += [(paths[i], label) for i in sorted(order[:held])]
        train += [(paths[i], label) for i in sorted(order[held:])]
    return names, train, test


def decode_all(items, root):
    """(uint8 images [N, 32, 32, 3], uint8 labels [N]); every undecodable file is named."""
    images, bad = [], []
    for path, _ in items:
        try:
            with open(path, 'rb') as f:
                images.append(_decode(tf.constant(f.read())).numpy())
        except (OSError, tf.errors.InvalidArgumentError):
            bad.append(os.path.relpath(path, root))
    if bad:
        shown = ', '.join(bad[:10]) + (' and %d more' % (len(bad) - 10) if len(bad) > 10 else '')
        raise UserError('%d image%s in %s cannot be decoded as PNG or JPEG: %s; remove or '
                        'replace them' % (len(bad), 's' * (len(bad) > 1), root, shown),
                        settings=('image_folder',))
    return np.stack(images), np.array([label for _, label in items], np.uint8)


def records(images, labels):
    """CIFAR-10 records: a label byte, then the red, green and blue 32x32 planes."""
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), cifar.IMAGE_BYTES)
    return np.concatenate([labels[:, None], planes], axis=1).tobytes()


def convert(image_folder, data_path, test_fraction=0.2, out=print):
    """Writes the CIFAR-10 files and batches.meta.txt of image_folder's images into
    data_path (new, or empty); returns (class names, training count, test count)."""
    if os.path.isdir(data_path) and os.listdir(data_path):
        raise UserError('data_path=%s is not empty; give a new folder, so that nothing in it '
                        'is overwritten' % data_path, settings=('data_path',))
    if os.path.exists(data_path) and not os.path.isdir(data_path):
        raise UserError('data_path=%s is a file; it must be a new folder' % data_path,
                        settings=('data_path',))
    names, train, test = layout(image_folder, test_fraction)
    if len(train) < len(TRAIN_FILES):
        raise UserError('image_folder=%s gives %d training images; the %d CIFAR-10 training '
                        'files need at least one each' % (image_folder, len(train),
                                                          len(TRAIN_FILES)),
                        settings=('image_folder',))
    if len(names) > 256:
        raise UserError('image_folder=%s has %d classes; a CIFAR record\'s label byte holds '
                        'at most 256' % (image_folder, len(names)), settings=('image_folder',))
    out('decoding %d training and %d test images of %d classes from %s'
        % (len(train), len(test), len(names), image_folder))
    images, labels = decode_all(train + test, image_folder)      # every bad file named at once
    train_images, train_labels = images[:len(train)], labels[:len(train)]
    test_images, test_labels = images[len(train):], labels[len(train):]
    order = np.random.RandomState(0).permutation(len(train_images))
    train_images, train_labels = train_images[order], train_labels[order]
    parent = os.path.dirname(os.path.abspath(data_path))
    os.makedirs(parent, exist_ok=True)
    scratch = tempfile.mkdtemp(prefix='.converting-', dir=parent)
    try:
        for name, part in zip(TRAIN_FILES, np.array_split(np.arange(len(train_images)),
                                                          len(TRAIN_FILES))):
            with open(os.path.join(scratch, name), 'wb') as f:
                f.write(records(train_images[part], train_labels[part]))
        with open(os.path.join(scratch, TEST_FILE), 'wb') as f:
            f.write(records(test_images, test_labels))
        with open(os.path.join(scratch, cifar.LABEL_NAMES), 'w', encoding='utf-8') as f:
            f.write('\n'.join(names) + '\n')
        if os.path.isdir(data_path):
            os.rmdir(data_path)                  # empty, checked above
        os.rename(scratch, data_path)
    except OSError as e:
        raise UserError('data_path=%s: could not write the files (%s); nothing was written'
                        % (data_path, e.strerror or e), settings=('data_path',)) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return names, len(train_images), len(test_images)
