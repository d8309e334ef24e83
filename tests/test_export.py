"""The SavedModel export and image-file predictions, checked against the evaluator."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from conftest import error_lines, run_script
from v2 import data, evaluate, train
from v2.model import ModelConfig
from v2.schedule import Schedule

# Run in a fresh process from a folder without this project: only TensorFlow is needed.
LOAD_AND_PREDICT = '''
import sys, numpy as np, tensorflow as tf
served = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
out = served(images=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], out['probabilities'].numpy())
np.save(sys.argv[4], out['classes'].numpy())
'''


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    from conftest import write_cifar
    root = tmp_path_factory.mktemp('export')
    data_path = write_cifar(root / 'data')
    config = train.TrainConfig(ckpt_path=str(root / 'ckpt'), log_path=str(root / 'logs'),
                               batch_size=8, num_iterations=4, log_per_iterations=4,
                               schedule=Schedule(boundaries=(), values=(0.05,)))
    train.train(ModelConfig(num_layers=8), config, str(data_path), out=lambda s: None)
    run = run_script('run_evaluator.py', '--ckpt_path=%s' % (root / 'ckpt'),
                     '--export_dir=%s' % (root / 'saved'))
    assert run.returncode == 0, run.stderr
    assert 'saved_model_cli show' in run.stdout
    return root


def test_saved_model_in_a_fresh_process_predicts_as_the_evaluator(exported, tmp_path):
    images, labels = data.load_split(str(exported / 'data'), data.CIFAR10, 'test')
    np.save(tmp_path / 'images.npy', images.numpy())
    subprocess.run([sys.executable, '-c', LOAD_AND_PREDICT, str(exported / 'saved'),
                    str(tmp_path / 'images.npy'), str(tmp_path / 'p.npy'),
                    str(tmp_path / 'c.npy')], cwd=tmp_path, check=True, timeout=300)
    probabilities, classes = np.load(tmp_path / 'p.npy'), np.load(tmp_path / 'c.npy')
    net, saved = evaluate.load_network(str(exported / 'ckpt'))
    logits = net(data.normalize(images, saved.pixel_mean), training=False)
    np.testing.assert_allclose(probabilities, tf.nn.softmax(logits).numpy(), atol=1e-5)
    np.testing.assert_array_equal(classes, np.argmax(logits.numpy(), axis=-1))
    (_, _, metrics), = evaluate.evaluate_checkpoints(str(exported / 'ckpt'),
                                                     str(exported / 'data'), out=lambda s: None)
    assert np.mean(classes == labels.numpy()) == pytest.approx(metrics.accuracy)
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels.numpy(), classes), 1)
    assert confusion.tolist() == metrics.confusion


def test_saved_model_cli_shows_the_serving_signature(exported):
    run = subprocess.run(['saved_model_cli', 'show', '--dir', str(exported / 'saved'),
                          '--tag_set', 'serve', '--signature_def', 'serving_default'],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for word in ("inputs['images']", 'DT_UINT8', '(-1, 32, 32, 3)', "outputs['probabilities']",
                 "outputs['classes']"):
        assert word in run.stdout, word


def test_export_refuses_a_folder_that_holds_files(exported):
    run = run_script('run_evaluator.py', '--ckpt_path=%s' % (exported / 'ckpt'),
                     '--export_dir=%s' % (exported / 'saved'))
    assert run.returncode == 1
    assert 'is not empty' in error_lines(run.stderr)[0]


def test_image_files_get_class_names_and_probabilities(exported, tmp_path):
    images, _ = data.load_split(str(exported / 'data'), data.CIFAR10, 'test')
    small, large = tmp_path / 'small.png', tmp_path / 'large.png'
    small.write_bytes(tf.io.encode_png(images[0]).numpy())
    large.write_bytes(tf.io.encode_png(tf.cast(tf.image.resize(images[1], [64, 64]),
                                               tf.uint8)).numpy())
    run = run_script('run_evaluator.py', '--ckpt_path=%s' % (exported / 'ckpt'),
                     '--images=%s,%s' % (small, large))
    assert run.returncode == 0, run.stderr
    assert 'large.png is 64x64; resized to 32x32' in run.stdout
    net, saved = evaluate.load_network(str(exported / 'ckpt'))
    best = int(np.argmax(net(data.normalize(images[:1], saved.pixel_mean)).numpy()))
    line = [l for l in run.stdout.splitlines() if l.startswith(str(small))][0]
    assert line.split(': ')[1].startswith(data.CIFAR10_CLASSES[best] + ' ')
    bad = tmp_path / 'bad.png'
    bad.write_bytes(b'not an image')
    run = run_script('run_evaluator.py', '--ckpt_path=%s' % (exported / 'ckpt'),
                     '--images=%s' % bad)
    assert run.returncode == 1 and 'bad.png: not a readable image' in error_lines(run.stderr)[0]
