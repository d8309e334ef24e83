"""The record format, the file checks and the input pipelines."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import record_bytes, write_cifar
from v2 import data
from v2.errors import UserError


def test_decode_hand_written_record():
    # One record: label 7, then R plane 0..1023 mod 256, G plane all 100, B plane all 200.
    raw = bytes([7]) + bytes(i % 256 for i in range(1024)) + bytes([100] * 1024) + \
        bytes([200] * 1024)
    images, labels = data.decode_records(tf.constant([raw]))
    assert labels.numpy().tolist() == [7]
    assert images.shape == (1, 32, 32, 3) and images.dtype == tf.uint8
    img = images.numpy()[0]
    assert img[0, 0].tolist() == [0, 100, 200]
    assert img[0, 5, 0] == 5                     # row-major: column 5 of row 0
    assert img[2, 3, 0] == (2 * 32 + 3) % 256    # row 2, column 3
    assert (img[..., 1] == 100).all() and (img[..., 2] == 200).all()


def _cifar100_record(coarse, fine, red=10, green=20, blue=30):
    return bytes([coarse, fine]) + bytes([red] * 1024) + bytes([green] * 1024) + \
        bytes([blue] * 1024)


@pytest.mark.parametrize('labels, index', [('fine', 1), ('coarse', 0)])
def test_decode_hand_written_cifar100_records(labels, index):
    spec = data.DATASETS['cifar100' if labels == 'fine' else 'cifar100_coarse']
    assert spec.record_bytes == 3074 and spec.label_index == index
    raw = [_cifar100_record(3, 42), _cifar100_record(19, 99, red=7)]
    images, got = data.decode_records(tf.constant(raw), spec)
    assert got.numpy().tolist() == ([42, 99] if labels == 'fine' else [3, 19])
    assert images.numpy()[0, 5, 7].tolist() == [10, 20, 30]
    assert images.numpy()[1, 0, 0, 0] == 7


def test_cifar100_files_are_checked_with_their_own_record_size(tmp_path):
    spec = data.DATASETS['cifar100']
    (tmp_path / 'train.bin').write_bytes(_cifar100_record(1, 2) * 3)
    (tmp_path / 'test.bin').write_bytes(_cifar100_record(1, 100))
    images, labels = data.load_split(str(tmp_path), spec, 'train')
    assert images.shape == (3, 32, 32, 3) and labels.numpy().tolist() == [2, 2, 2]
    with pytest.raises(UserError, match='test.bin: record 0 has label 100; labels must be 0-99'):
        data.load_split(str(tmp_path), spec, 'test')
    (tmp_path / 'test.bin').write_bytes(_cifar100_record(1, 2) + b'x' * 3073)
    with pytest.raises(UserError, match='6147 bytes is not a multiple of the 3074-byte record'):
        data.load_split(str(tmp_path), spec, 'test')
    with pytest.raises(UserError, match='cifar-100-binary.tar.gz'):
        data.load_split(str(tmp_path / 'nowhere'), spec, 'test')


def test_read_records_keeps_file_order(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    (tmp_path / 'a.bin').write_bytes(record_bytes([1, 2, 3], images[:3]))
    (tmp_path / 'b.bin').write_bytes(record_bytes([4, 5], images[3:]))
    got_images, got_labels = data.read_records([tmp_path / 'a.bin', tmp_path / 'b.bin'])
    assert got_labels.numpy().tolist() == [1, 2, 3, 4, 5]
    np.testing.assert_array_equal(got_images.numpy(), images)


@pytest.mark.parametrize('damage, message', [
    (lambda f: f.write_bytes(b''), 'data_batch_3.bin: the file is empty'),
    (lambda f: f.write_bytes(f.read_bytes() + b'x'),
     'data_batch_3.bin: %d bytes is not a multiple of the 3073-byte record' % (16 * 3073 + 1)),
    (lambda f: f.write_bytes(f.read_bytes()[:-100]), 'is not a multiple of the 3073-byte'),
    (lambda f: f.unlink(), 'missing data_batch_3.bin'),
])
def test_bad_training_file_is_named(tiny_data, damage, message):
    damage(tiny_data / 'data_batch_3.bin')
    with pytest.raises(UserError, match=message):
        data.load_split(str(tiny_data), data.CIFAR10, 'train')


def test_label_out_of_range_names_file_and_record(tiny_data):
    raw = bytearray((tiny_data / 'test_batch.bin').read_bytes())
    raw[5 * data.RECORD_BYTES] = 10
    (tiny_data / 'test_batch.bin').write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r'test_batch.bin: record 5 has label 10; labels must be 0-9'):
        data.load_split(str(tiny_data), data.CIFAR10, 'test')


def test_data_path_must_be_an_existing_folder(tmp_path):
    with pytest.raises(UserError, match='no such folder; add --download'):
        data.check_files(str(tmp_path / 'nowhere'), data.CIFAR10.train_files)
    (tmp_path / 'file').write_bytes(b'x')
    with pytest.raises(UserError, match='is a file'):
        data.check_files(str(tmp_path / 'file'), data.CIFAR10.train_files)


def test_pixel_mean_is_the_per_pixel_mean():
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(data.pixel_mean(tf.constant(images)), images.mean(axis=0),
                               rtol=1e-6)


def _as_crop(out, src):
    """(dy, dx, flipped) if `out` is a 32x32 crop of the zero-padded `src` or its mirror."""
    padded = np.pad(src, [(4, 4), (4, 4), (0, 0)])
    for flipped in (False, True):
        view = padded[:, ::-1] if flipped else padded
        for dy in range(9):
            for dx in range(9):
                if np.array_equal(view[dy:dy + 32, dx:dx + 32], out):
                    return dy, dx, flipped
    return None


def test_augment_crops_and_flips_the_padded_image():
    images = np.random.default_rng(0).normal(size=(64, 32, 32, 3)).astype(np.float32)
    out = data.augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == images.shape
    found = [_as_crop(o, i) for o, i in zip(out, images)]
    assert None not in found
    assert len({f[:2] for f in found}) > 10                   # many different offsets
    assert 10 < sum(f[2] for f in found) < 54                 # about half are flipped
    again = data.augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)                 # same key, same batch


def _batches(num_examples, batch_size, start, stop, seed=0):
    images = tf.zeros([num_examples, 32, 32, 3], tf.uint8)
    labels = tf.range(num_examples)       # the label is the example's index
    mean = np.zeros([32, 32, 3], np.float32)
    return [(x.numpy(), y.numpy()) for x, y in
            data.train_batches(images, labels, mean, batch_size, seed, start, stop)]


def test_every_epoch_is_a_fresh_shuffle_of_whole_batches():
    batches = _batches(num_examples=20, batch_size=6, start=0, stop=9)   # 3 steps per epoch
    assert len(batches) == 9 and all(y.shape == (6,) for _, y in batches)
    epochs = [np.concatenate([y for _, y in batches[e * 3:e * 3 + 3]]) for e in range(3)]
    for order in epochs:
        assert len(set(order.tolist())) == 18        # no example twice within an epoch
    assert not np.array_equal(epochs[0], epochs[1])


def test_resumed_pipeline_gives_the_same_batches():
    straight = _batches(num_examples=20, batch_size=6, start=0, stop=10)
    resumed = _batches(num_examples=20, batch_size=6, start=4, stop=10)
    assert len(resumed) == 6
    for (x1, y1), (x2, y2) in zip(straight[4:], resumed):
        np.testing.assert_array_equal(y1, y2)
        np.testing.assert_array_equal(x1, x2)


def test_batch_larger_than_the_data_set_is_refused():
    with pytest.raises(UserError, match='--batch_size=30 is larger than the 20'):
        _batches(num_examples=20, batch_size=30, start=0, stop=1)


def test_eval_batches_cover_the_set_in_order(tmp_path):
    folder = write_cifar(tmp_path, test_records=23)
    images, labels = data.load_split(str(folder), data.CIFAR10, 'test')
    mean = data.pixel_mean(images)
    batches = list(data.eval_batches(images, labels, mean, batch_size=10))
    assert [y.shape[0] for _, y in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels.numpy())
    np.testing.assert_allclose(batches[0][0].numpy(),
                               images.numpy()[:10].astype(np.float32) - mean, rtol=1e-6)


def test_eval_batches_do_not_autotune(tmp_path):
    # Each evaluation starts a new iterator; the autotuner's start-up slowed passes (data.py).
    folder = write_cifar(tmp_path, test_records=4)
    images, labels = data.load_split(str(folder), data.CIFAR10, 'test')
    batches = data.eval_batches(images, labels, data.pixel_mean(images), batch_size=2)
    assert batches.options().autotune.enabled is False
