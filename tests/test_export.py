"""Exports: the SavedModel and the TFLite files against the evaluator, and image files."""

import subprocess
import sys

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from conftest import averaged_and_live_nets, numpy_test_set, quiet

from v2.cli import app, evaluator, flags
from v2.data import cifar, pipeline
from v2.evaluation import evaluate, export
from v2.runtime import devices

# Run in a fresh process from a folder without this project: only TensorFlow is needed.
LOAD_AND_PREDICT = '''
import sys, numpy as np, tensorflow as tf
served = tf.saved_model.load(sys.argv[1]).signatures['serving_default']
out = served(images=tf.constant(np.load(sys.argv[2])))
np.save(sys.argv[3], out['probabilities'].numpy())
np.save(sys.argv[4], out['classes'].numpy())
'''


def export_run(trained, session_data, folder, *extra):
    """The evaluator's export of the trained run into `folder`, as a user runs it."""
    status, line = app.call(evaluator.main, ['run_evaluator.py', '--ckpt_path=%s' % (
        trained / 'ckpt'), '--export_dir=%s' % folder, '--data_path=%s' % session_data,
        *extra], flags.EVALUATOR)
    assert status == 0, line


@pytest.fixture(scope='module')
def exported(trained, session_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp('export') / 'saved'
    export_run(trained, session_data, folder, '--tflite=float32')
    return folder


def _test_set(session_data):
    return cifar.load_split(str(session_data), cifar.CIFAR10, 'test')


def test_the_saved_model_predicts_as_the_evaluator(exported, trained, session_data):
    images, labels = _test_set(session_data)
    served = tf.saved_model.load(str(exported)).signatures['serving_default']
    out = served(images=images)
    net, saved = evaluate.load_network(str(trained / 'ckpt'), out=quiet)
    logits = net(pipeline.normalize(images, saved.pixel_mean), training=False)
    np.testing.assert_allclose(out['probabilities'].numpy(), tf.nn.softmax(logits).numpy(),
                               atol=1e-5)
    result, = evaluate.evaluate_checkpoints(str(trained / 'ckpt'), evaluate.EvalOptions(
        data_path=str(session_data)), out=quiet).results
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels.numpy(), out['classes'].numpy()), 1)
    assert confusion.tolist() == result.metrics.confusion


def test_the_tflite_file_agrees_with_the_saved_model(exported, session_data):
    images, _ = _test_set(session_data)
    served = tf.saved_model.load(str(exported)).signatures['serving_default']
    reference = served(images=images)['probabilities'].numpy()
    got = export.tflite_predict(export.tflite_runner(str(exported / 'model_float32.tflite')),
                                images.numpy(), batch=5)
    np.testing.assert_allclose(got, reference, atol=1e-5)


def test_image_files_get_class_names_from_the_checkpoint_and_the_tflite_file(
        exported, trained, session_data, tmp_path, capsys):
    images, _ = _test_set(session_data)
    small, large = tmp_path / 'small.png', tmp_path / 'large.png'
    small.write_bytes(tf.io.encode_png(images[0]).numpy())
    large.write_bytes(tf.io.encode_png(tf.cast(tf.image.resize(images[1], [64, 64]),
                                               tf.uint8)).numpy())
    net, saved = evaluate.load_network(str(trained / 'ckpt'), out=quiet)
    best = int(np.argmax(net(pipeline.normalize(images[:1], saved.pixel_mean)).numpy()))
    for ckpt in (trained / 'ckpt', exported / 'model_float32.tflite'):
        status, line = app.call(evaluator.main, ['run_evaluator.py', '--ckpt_path=%s' % ckpt,
                                                 '--images=%s,%s' % (small, large)],
                                flags.EVALUATOR)
        assert status == 0, line
        out = capsys.readouterr().out
        assert 'large.png is 64x64; resized to 32x32' in out
        first = [line for line in out.splitlines() if line.startswith(str(small))][0]
        assert first.split(': ')[1].startswith(cifar.CIFAR10_CLASSES[best] + ' ')


def test_the_float32_check_computes_its_reference_in_ieee_float32(exported, trained,
                                                                  session_data, tmp_path,
                                                                  monkeypatch):
    """On Ampere and later GPUs the SavedModel would compute in TF32 (10-bit mantissa),
    TFLite's interpreter in IEEE float32: a correct file could be refused."""
    import shutil

    from v2.runtime import checkpoint
    folder = tmp_path / 'saved'
    shutil.copytree(exported, folder)
    load, seen = tf.saved_model.load, []

    def spying_load(path):
        serving = load(path).signatures['serving_default']

        class Loaded:
            signatures = {'serving_default': lambda **inputs: seen.append(
                tf.config.experimental.tensor_float_32_execution_enabled()) or serving(**inputs)}
        return Loaded
    monkeypatch.setattr(tf.saved_model, 'load', spying_load)
    saved = checkpoint.Saved(checkpoint.find(str(trained / 'ckpt')))
    export.export_tflite_files(str(folder), ['float32'], saved, data_path=str(session_data),
                               out=quiet)
    assert seen and not any(seen)
    assert tf.config.experimental.tensor_float_32_execution_enabled()      # restored after


def test_export_refuses_a_folder_that_holds_files(exported, trained):
    status, line = app.call(evaluator.main, ['run_evaluator.py', '--ckpt_path=%s' % (
        trained / 'ckpt'), '--export_dir=%s' % exported], flags.EVALUATOR)
    assert status == 1 and 'is not empty' in line


def test_the_export_of_a_run_with_weight_averages_serves_them_unless_told_otherwise(
        averaged_run, session_data, tmp_path):
    """--export_dir of a run with weight averages: the SavedModel's probabilities of the
    uint8 test images are numpy's softmax of numpy's forward pass of the averaged weights
    (numpy_ref.weight_averages of the run's checkpoints) by default, of the live weights
    of the last step with --averaged=false (the two differ by far more than 1e-5)."""
    root, recipe, *_ = averaged_run
    x, _ = numpy_test_set(session_data)
    expected = {}
    for averaged, net in zip((True, False), averaged_and_live_nets(root, recipe)):
        logits = ref.preact_resnet_logits(net, x)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        expected[averaged] = p / p.sum(axis=1, keepdims=True)
    assert np.abs(expected[True] - expected[False]).max() > 1e-3
    images, _ = _test_set(session_data)
    for averaged in (True, False):
        folder = tmp_path / str(averaged)
        status, line = app.call(evaluator.main, [
            'run_evaluator.py', '--ckpt_path=%s' % (root / 'ckpt'), '--export_dir=%s' % folder,
            *([] if averaged else ['--averaged=false'])], flags.EVALUATOR)
        assert status == 0, line
        served = tf.saved_model.load(str(folder)).signatures['serving_default']
        np.testing.assert_allclose(served(images=images)['probabilities'].numpy(),
                                   expected[averaged], atol=1e-5)


@pytest.mark.slow
def test_every_tflite_kind_stays_within_its_bounds(trained, session_data, tmp_path, capsys):
    folder = tmp_path / 'saved'
    export_run(trained, session_data, folder, '--tflite=float32,float16,int8')
    out = capsys.readouterr().out
    sizes = {kind: (folder / ('model_%s.tflite' % kind)).stat().st_size
             for kind in export.TFLITE_KINDS}
    assert sizes['int8'] < sizes['float16'] < sizes['float32']
    assert out.count('classed otherwise than by the SavedModel') == 3


@pytest.mark.slow
def test_the_saved_model_loads_in_a_fresh_process_without_this_project(exported, session_data,
                                                                        tmp_path):
    images, _ = _test_set(session_data)
    np.save(tmp_path / 'images.npy', images.numpy())
    subprocess.run([sys.executable, '-c', LOAD_AND_PREDICT, str(exported),
                    str(tmp_path / 'images.npy'), str(tmp_path / 'p.npy'),
                    str(tmp_path / 'c.npy')], cwd=tmp_path, check=True, timeout=300)
    served = tf.saved_model.load(str(exported)).signatures['serving_default']
    np.testing.assert_allclose(np.load(tmp_path / 'p.npy'),
                               served(images=images)['probabilities'].numpy(), atol=1e-6)
    run = subprocess.run(['saved_model_cli', 'show', '--dir', str(exported), '--tag_set',
                          'serve', '--signature_def', 'serving_default'],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    for word in ("inputs['images']", 'DT_UINT8', '(-1, 32, 32, 3)', "outputs['probabilities']",
                 "outputs['classes']"):
        assert word in run.stdout, word


def test_the_onnx_file_agrees_with_the_saved_model(trained, session_data, tmp_path, capsys):
    """onnxruntime's probabilities of the test images against the SavedModel's, computed
    here in IEEE float32: the same float32 arithmetic in another order."""
    import onnxruntime
    folder = tmp_path / 'saved'
    export_run(trained, session_data, folder, '--onnx')
    printed = capsys.readouterr().out
    assert 'model.onnx' in printed and 'top-1 agreement with the SavedModel' in printed
    images, labels = _test_set(session_data)
    served = tf.saved_model.load(str(folder)).signatures['serving_default']
    with devices.ieee_float32():
        reference = served(images=images)['probabilities'].numpy()
    session = onnxruntime.InferenceSession(str(folder / 'model.onnx'),
                                           providers=['CPUExecutionProvider'])
    outputs = dict(zip([o.name for o in session.get_outputs()],
                       session.run(None, {'images': images.numpy()})))
    np.testing.assert_allclose(outputs['probabilities'], reference, atol=1e-5)
    np.testing.assert_array_equal(outputs['classes'], reference.argmax(-1))


def test_onnx_without_its_converter_or_a_failed_conversion_is_one_line(trained, session_data,
                                                                       tmp_path, monkeypatch):
    args = ['run_evaluator.py', '--ckpt_path=%s' % (trained / 'ckpt'),
            '--data_path=%s' % session_data, '--onnx']
    status, line = app.call(evaluator.main, args, flags.EVALUATOR)
    assert status == 1 and '--onnx needs --export_dir' in line
    monkeypatch.setitem(sys.modules, 'tf2onnx', None)        # not installed
    status, line = app.call(evaluator.main, args + ['--export_dir=%s' % (tmp_path / 'a')],
                            flags.EVALUATOR)
    assert status == 1 and 'pip install .[onnx]' in line and '\n' not in line
    assert not (tmp_path / 'a').exists()                    # refused before anything ran
    monkeypatch.undo()
    import tf2onnx

    def cannot(*args, **kwargs):
        raise ValueError('Unsupported ops: SomeOp\nmore detail')
    monkeypatch.setattr(tf2onnx.convert, 'from_function', cannot)
    status, line = app.call(evaluator.main, args + ['--export_dir=%s' % (tmp_path / 'b')],
                            flags.EVALUATOR)
    assert status == 1 and 'could not convert' in line and 'Unsupported ops: SomeOp' in line
    assert tf2onnx.__version__ in line and not (tmp_path / 'b' / 'model.onnx').exists()
