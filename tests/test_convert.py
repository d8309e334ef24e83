"""Your own images -> CIFAR-10's binary files: pixels and labels against numpy, bad folders
refused with nothing written, and the trainer and evaluator reading the result."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import quiet

from v2.data import cifar, convert
from v2.errors import UserError


def _png(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tf.io.encode_png(np.asarray(pixels, np.uint8)).numpy())


def _read(folder, name):
    """Records of one file read with numpy: (images NHWC, labels)."""
    raw = np.fromfile(folder / name, np.uint8).reshape(-1, 3073)
    return raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), raw[:, 0]


@pytest.fixture
def images(tmp_path):
    """train/ and test/ folders of three classes; each image's colour encodes its class and
    index, so that a record can be traced to its file."""
    rng = np.random.default_rng(0)
    made = {}
    for part, count in (('train', 4), ('test', 2)):
        for label, name in enumerate(('zebra', 'apple', 'moon')):   # sorted: apple, moon, zebra
            for i in range(count):
                pixels = rng.integers(0, 256, (32, 32, 3))
                pixels[0, 0] = (label, i, 7)
                _png(tmp_path / 'images' / part / name / ('%d.png' % i), pixels)
                made[(part, name, i)] = pixels
    return tmp_path / 'images', made


def test_32x32_images_become_cifar_records_bit_for_bit(images, tmp_path):
    folder, made = images
    names, train, test = convert.convert(str(folder), str(tmp_path / 'data'), out=quiet)
    assert names == ['apple', 'moon', 'zebra'] and (train, test) == (12, 6)
    data = tmp_path / 'data'
    assert (data / 'batches.meta.txt').read_text() == 'apple\nmoon\nzebra\n'
    seen = []
    for name in [*cifar.CIFAR10.train_files, 'test_batch.bin']:
        pixels, labels = _read(data, name)
        part = 'test' if name == 'test_batch.bin' else 'train'
        for image, label in zip(pixels, labels):
            original = ('zebra', 'apple', 'moon')[image[0, 0, 0]]
            assert names[label] == original                  # the label is its folder's
            np.testing.assert_array_equal(image, made[(part, original, image[0, 0, 1])])
            seen.append((part, original, image[0, 0, 1]))
    assert sorted(seen) == sorted(made)                      # every image, once
    assert [len(_read(data, n)[1]) for n in cifar.CIFAR10.train_files] == [3, 3, 2, 2, 2]


def test_other_sizes_are_area_averaged_to_32x32_and_grey_becomes_rgb(tmp_path):
    """A 64x64 image of uniform 2x2 blocks shrinks to the blocks' values; a 50x70 uniform
    image stays uniform; a greyscale PNG gives three equal channels; a JPEG decodes too."""
    blocks = np.random.default_rng(1).integers(0, 256, (32, 32, 3))
    _png(tmp_path / 'in' / 'a' / 'big.png', blocks.repeat(2, axis=0).repeat(2, axis=1))
    _png(tmp_path / 'in' / 'a' / 'wide.png', np.full((50, 70, 3), (10, 200, 30)))
    _png(tmp_path / 'in' / 'b' / 'grey.png', np.full((40, 40, 1), 99))
    (tmp_path / 'in' / 'b' / 'photo.JPG').write_bytes(
        tf.io.encode_jpeg(np.full((32, 32, 3), 128, np.uint8), quality=100).numpy())
    for i in range(4):                              # more of each class, black
        _png(tmp_path / 'in' / 'a' / ('z%d.png' % i), np.zeros((8, 8, 3)))
        _png(tmp_path / 'in' / 'b' / ('z%d.png' % i), np.zeros((8, 8, 3)))
    convert.convert(str(tmp_path / 'in'), str(tmp_path / 'data'), test_fraction=0.25, out=quiet)
    pixels = np.concatenate([_read(tmp_path / 'data', n)[0] for n in
                             [*cifar.CIFAR10.train_files, 'test_batch.bin']])
    found = {tuple(p[5, 5]): p for p in pixels}
    np.testing.assert_array_equal(found[tuple(blocks[5, 5])], blocks)
    assert (found[(10, 200, 30)] == (10, 200, 30)).all() and (found[(99, 99, 99)] == 99).all()
    assert any(abs(int(k[0]) - 128) <= 1 for k in found)


def _refused(tmp_path, match, **kwargs):
    with pytest.raises(UserError, match=match):
        convert.convert(str(tmp_path / 'in'), str(tmp_path / 'data'), out=quiet, **kwargs)
    assert not (tmp_path / 'data').exists()                 # nothing written
    assert [p.name for p in tmp_path.iterdir()] == ['in']   # nor left beside it


def test_undecodable_images_are_named_and_nothing_is_written(tmp_path):
    for i in range(4):
        _png(tmp_path / 'in' / 'a' / ('%d.png' % i), np.zeros((8, 8, 3)))
        _png(tmp_path / 'in' / 'b' / ('%d.png' % i), np.zeros((8, 8, 3)))
    (tmp_path / 'in' / 'b' / 'broken.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    (tmp_path / 'in' / 'a' / 'empty.png').write_bytes(b'')
    _refused(tmp_path, r'2 images in .* cannot be decoded as PNG or JPEG: a/empty.png, '
                       r'b/broken.jpg; remove or replace them', test_fraction=0.2)


@pytest.mark.parametrize('case', ['no folders', 'empty class', 'case clash', 'too few'])
def test_bad_folders_are_one_line_and_nothing_is_written(tmp_path, case):
    (tmp_path / 'in').mkdir()
    if case != 'no folders':
        for i in range(2):
            _png(tmp_path / 'in' / 'cat' / ('%d.png' % i), np.zeros((8, 8, 3)))
    if case == 'empty class':
        (tmp_path / 'in' / 'dog').mkdir()
        (tmp_path / 'in' / 'dog' / 'notes.txt').write_text('no images here')
    if case == 'case clash':
        _png(tmp_path / 'in' / 'Cat' / '0.png', np.zeros((8, 8, 3)))
    match = {'no folders': 'holds no class folders',
             'empty class': 'the class dog has no PNG or JPEG images',
             'case clash': 'the class folders Cat and cat differ only in case',
             'too few': 'the class cat has 2 images, too few to give both training and test '
                        'images at test_fraction=0.1'}[case]
    _refused(tmp_path, match, test_fraction=0.1)


def test_a_folder_that_is_not_empty_is_never_written_into(images, tmp_path):
    (tmp_path / 'data').mkdir()
    (tmp_path / 'data' / 'mine.txt').write_text('keep me')
    with pytest.raises(UserError, match='is not empty; give a new folder'):
        convert.convert(str(images[0]), str(tmp_path / 'data'), out=quiet)
    assert [p.name for p in (tmp_path / 'data').iterdir()] == ['mine.txt']


def test_the_trainer_and_the_evaluator_take_the_converted_folder(images, tmp_path, capsys):
    from test_cli import evaluate_in_process, train_in_process
    data = tmp_path / 'data'
    convert.convert(str(images[0]), str(data), out=quiet)
    status, line = train_in_process('--data_path=%s' % data, '--ckpt_path=%s' % (tmp_path / 'c'),
                                    '--num_layers=8', '--num_iterations=2', '--batch_size=4')
    assert status == 0, line
    # CIFAR-10's ResNet-8 has 75,290 parameters; its last layer, 64 x 10 + 10 of them, has
    # 64 x 3 + 3 here: 75,290 - 650 + 195.
    assert 'ResNet-8: 74,835 trainable parameters' in capsys.readouterr().out
    status, line = evaluate_in_process('--data_path=%s' % data,
                                       '--ckpt_path=%s' % (tmp_path / 'c'))
    assert status == 0, line
    report = capsys.readouterr().out
    assert 'on 6 test images' in report and '  zebra' in report and 'airplane' not in report
    status, line = evaluate_in_process('--ckpt_path=%s' % (tmp_path / 'c'))
    assert status == 1 and 'needs the folder they were converted into' in line
    (data / 'data_batch_3.bin').unlink()
    status, line = train_in_process('--data_path=%s' % data, '--ckpt_path=%s' % (tmp_path / 'c'),
                                    '--num_layers=8', '--download')
    assert status == 1 and 'holds your own images (its batches.meta.txt), which cannot be' in line
