"""The record format, the file checks, the split and the input pipelines."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import record_bytes, write_cifar

from v2.data import cifar, pipeline
from v2.errors import UserError


def test_decode_hand_written_record():
    # One record: label 7, then R plane 0..1023 mod 256, G plane all 100, B plane all 200.
    raw = bytes([7]) + bytes(i % 256 for i in range(1024)) + bytes([100] * 1024) + \
        bytes([200] * 1024)
    images, labels = cifar.decode_records(tf.constant([raw]))
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
    spec = cifar.DATASETS['cifar100' if labels == 'fine' else 'cifar100_coarse']
    assert spec.record_bytes == 3074 and spec.label_index == index
    raw = [_cifar100_record(3, 42), _cifar100_record(19, 99, red=7)]
    images, got = cifar.decode_records(tf.constant(raw), spec)
    assert got.numpy().tolist() == ([42, 99] if labels == 'fine' else [3, 19])
    assert images.numpy()[0, 5, 7].tolist() == [10, 20, 30]
    assert images.numpy()[1, 0, 0, 0] == 7


def test_cifar100_files_are_checked_with_their_own_record_size(tmp_path):
    spec = cifar.DATASETS['cifar100']
    (tmp_path / 'train.bin').write_bytes(_cifar100_record(1, 2) * 3)
    (tmp_path / 'test.bin').write_bytes(_cifar100_record(1, 100))
    images, labels = cifar.load_split(str(tmp_path), spec, 'train')
    assert images.shape == (3, 32, 32, 3) and labels.numpy().tolist() == [2, 2, 2]
    with pytest.raises(UserError, match='test.bin: record 0 has label 100; labels must be 0-99'):
        cifar.load_split(str(tmp_path), spec, 'test')
    (tmp_path / 'test.bin').write_bytes(_cifar100_record(1, 2) + b'x' * 3073)
    with pytest.raises(UserError, match='6147 bytes is not a multiple of the 3074-byte record'):
        cifar.load_split(str(tmp_path), spec, 'test')
    with pytest.raises(UserError, match='cifar-100-binary.tar.gz'):
        cifar.load_split(str(tmp_path / 'nowhere'), spec, 'test')


def test_read_records_keeps_file_order(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(5, 32, 32, 3), dtype=np.uint8)
    (tmp_path / 'a.bin').write_bytes(record_bytes([1, 2, 3], images[:3]))
    (tmp_path / 'b.bin').write_bytes(record_bytes([4, 5], images[3:]))
    got_images, got_labels = cifar.read_records([tmp_path / 'a.bin', tmp_path / 'b.bin'])
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
        cifar.load_split(str(tiny_data), cifar.CIFAR10, 'train')


def test_label_out_of_range_names_file_and_record(tiny_data):
    raw = bytearray((tiny_data / 'test_batch.bin').read_bytes())
    raw[5 * cifar.RECORD_BYTES] = 10
    (tiny_data / 'test_batch.bin').write_bytes(bytes(raw))
    with pytest.raises(UserError,
                       match=r'test_batch.bin: record 5 has label 10; labels must be 0-9'):
        cifar.load_split(str(tiny_data), cifar.CIFAR10, 'test')


def test_data_path_must_be_an_existing_folder(tmp_path):
    with pytest.raises(UserError, match='^data_path=.*: no such folder; add download') as caught:
        cifar.check_files(str(tmp_path / 'nowhere'), cifar.CIFAR10.train_files)
    assert caught.value.flag_message().startswith('--data_path=')
    assert 'add --download to fetch it, or download the binary' in caught.value.flag_message()
    (tmp_path / 'file').write_bytes(b'x')
    with pytest.raises(UserError, match='is a file'):
        cifar.check_files(str(tmp_path / 'file'), cifar.CIFAR10.train_files)


def test_pixel_mean_is_the_per_pixel_mean():
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(cifar.pixel_mean(tf.constant(images)), images.mean(axis=0),
                               rtol=1e-6)


def test_validation_split_holds_out_the_last_images():
    images = tf.reshape(tf.range(10 * 32 * 32 * 3) % 256, [10, 32, 32, 3])
    labels = tf.range(10)
    (train_x, train_y), (val_x, val_y) = cifar.hold_out(images, labels, 3)
    assert train_y.numpy().tolist() == list(range(7)) and val_y.numpy().tolist() == [7, 8, 9]
    np.testing.assert_array_equal(val_x.numpy(), images.numpy()[7:])
    assert cifar.hold_out(images, labels, 0)[1] is None
    with pytest.raises(UserError, match='validation_split=10 holds out every one'):
        cifar.hold_out(images, labels, 10)


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
    out = pipeline.augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == images.shape
    found = [_as_crop(o, i) for o, i in zip(out, images)]
    assert None not in found
    assert len({f[:2] for f in found}) > 10                   # many different offsets
    assert 10 < sum(f[2] for f in found) < 54                 # about half are flipped
    again = pipeline.augment(tf.constant(images), tf.constant([3, 4], tf.int64)).numpy()
    np.testing.assert_array_equal(out, again)                 # same key, same batch


def test_a_replicas_share_is_augmented_as_in_the_whole_batch():
    images = tf.random.normal([8, 32, 32, 3])
    key = tf.constant([5, 6], tf.int64)
    whole = pipeline.prepare_batch(images, 0.0, key, cutout_size=8).numpy()
    share = pipeline.prepare_batch(images[4:], 0.0, key, first=4, total=8, cutout_size=8)
    np.testing.assert_array_equal(share.numpy(), whole[4:])


def test_cutout_zeroes_one_square_that_may_cross_the_border():
    images = tf.ones([200, 32, 32, 3])
    out = pipeline.cutout(images, tf.constant([1, 2], tf.int64), 16).numpy()
    zeroed = out[..., 0] == 0
    for mask in zeroed:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        assert rows.size and cols.size and rows.size <= 16 and cols.size <= 16
        assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()     # one solid rectangle
        assert mask.sum() == rows.size * cols.size
    sizes = zeroed.sum(axis=(1, 2))
    assert (sizes == 256).mean() > 0.15 and (sizes < 256).mean() > 0.3    # inside; clipped
    assert (out[~zeroed] == 1).all()                                       # the rest untouched
    # A step's crop and flip are the same with and without cutout (its key is derived).
    key = tf.constant([3, 9], tf.int64)
    x = tf.random.normal([4, 32, 32, 3])
    with_cutout = pipeline.prepare_batch(tf.zeros([4, 32, 32, 3]), -x[0], key, cutout_size=16)
    plain = pipeline.prepare_batch(tf.zeros([4, 32, 32, 3]), -x[0], key)
    kept = with_cutout.numpy() != 0
    np.testing.assert_array_equal(with_cutout.numpy()[kept], plain.numpy()[kept])


def _distinct(count):
    """Images whose every pixel is their index, labels their index mod 10: a mix-up shows."""
    images = np.broadcast_to(np.arange(count, dtype=np.uint8)[:, None, None, None],
                             (count, 32, 32, 3)).copy()
    return tf.constant(images), tf.constant(np.arange(count) % 10, tf.int32)


def test_images_and_labels_stay_paired_through_the_pipeline():
    images, labels = _distinct(60)
    mean = np.full([32, 32, 3], 0.5, np.float32)
    seen = []
    for step, (x, y) in enumerate(pipeline.train_batches(images, labels, 8, 3, 0, 14)):
        x, y = x.numpy(), y.numpy()
        index = x[:, 0, 0, 0].astype(int)
        assert (x == index[:, None, None, None]).all()        # whole images, not mixed
        np.testing.assert_array_equal(y, index % 10)
        ready = pipeline.prepare_batch(x, mean, pipeline.step_key(3, step)).numpy()
        np.testing.assert_array_equal(ready[:, 16, 16, 0], index - 0.5)   # centre: never padding
        seen.extend(index)
    assert len(set(seen[:56])) == 56                          # an epoch has no repeats


def test_every_epoch_is_a_fresh_shuffle_of_whole_batches():
    images, labels = _distinct(20)
    batches = [y.numpy() for _, y in pipeline.train_batches(images, labels, 6, 0, 0, 9)]
    assert len(batches) == 9 and all(y.shape == (6,) for y in batches)
    images_seen = [np.concatenate(batches[e * 3:e * 3 + 3]) for e in range(3)]
    first = [x.numpy()[:, 0, 0, 0] for x, _ in pipeline.train_batches(images, labels, 6, 0, 0, 3)]
    assert len(set(np.concatenate(first).tolist())) == 18     # no example twice within an epoch
    assert not np.array_equal(images_seen[0], images_seen[1])


def test_resumed_pipeline_gives_the_same_batches():
    images, labels = _distinct(20)
    straight = list(pipeline.train_batches(images, labels, 6, 0, 0, 10))
    resumed = list(pipeline.train_batches(images, labels, 6, 0, 4, 10))
    assert len(resumed) == 6
    for (x1, y1), (x2, y2) in zip(straight[4:], resumed):
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())


def _float_pipeline_before_the_uint8_path(images, labels, mean, batch_size, seed, start, stop):
    """The float32 pipeline the trainer had before batches went to the device as uint8:
    gather, normalise and augment in tf.data (kept here as the oracle of the change)."""
    num = int(images.shape[0])
    per_epoch = num // batch_size

    def epoch_batches(epoch):
        order = pipeline.epoch_order(num, seed, epoch)[:per_epoch * batch_size]
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [per_epoch, batch_size]))

    def make_batch(step, indices):
        key = tf.stack([tf.cast(seed, tf.int64), step])
        batch = pipeline.augment(tf.cast(tf.gather(images, indices), tf.float32) - mean, key)
        return batch, tf.gather(labels, indices)

    first = start // per_epoch
    indices = (tf.data.Dataset.range(first, (stop - 1) // per_epoch + 1).flat_map(epoch_batches)
               .skip(start - first * per_epoch))
    return tf.data.Dataset.zip((tf.data.Dataset.range(start, stop), indices)).map(make_batch)


def test_the_uint8_path_gives_the_float_pipelines_batches_bit_for_bit():
    rng = np.random.default_rng(4)
    images = tf.constant(rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8))
    labels = tf.constant(rng.integers(0, 10, 40), tf.int32)
    mean = cifar.pixel_mean(images)
    old = list(_float_pipeline_before_the_uint8_path(images, labels, mean, 8, 7, 3, 9))
    new = list(pipeline.augmented_batches(images, labels, mean, 8, 7, 3, 9))
    assert len(old) == len(new) == 6
    for (x1, y1), (x2, y2) in zip(old, new):
        np.testing.assert_array_equal(x1.numpy(), x2.numpy())
        np.testing.assert_array_equal(y1.numpy(), y2.numpy())


def test_batch_larger_than_the_data_set_is_refused():
    images, labels = _distinct(20)
    with pytest.raises(UserError, match='batch_size=30 is larger than the 20'):
        pipeline.train_batches(images, labels, 30, 0, 0, 1)


def test_eval_batches_cover_the_set_in_order(tmp_path):
    folder = write_cifar(tmp_path, test_records=23)
    images, labels = cifar.load_split(str(folder), cifar.CIFAR10, 'test')
    batches = list(pipeline.eval_batches(images, labels, batch_size=10))
    assert [y.shape[0] for _, y in batches] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), labels.numpy())
    np.testing.assert_array_equal(batches[0][0].numpy(), images.numpy()[:10])
    # Each evaluation starts a new iterator; the autotuner's start-up slowed passes.
    assert pipeline.eval_batches(images, labels, 2).options().autotune.enabled is False


def test_a_batch_is_the_same_under_xla_as_on_this_cpu():
    # TensorFlow's default random algorithm depends on the device; ours is named, so a
    # (seed, step) gives one batch wherever the step runs (and a run can move).
    images = tf.constant(np.random.default_rng(2).integers(0, 256, (16, 32, 32, 3), np.uint8))
    key = pipeline.step_key(5, 11)
    mean = tf.fill([32, 32, 3], 100.0)
    compiled = tf.function(lambda x: pipeline.prepare_batch(x, mean, key, cutout_size=8),
                           jit_compile=True)
    np.testing.assert_array_equal(compiled(images).numpy(),
                                  pipeline.prepare_batch(images, mean, key, cutout_size=8).numpy())
