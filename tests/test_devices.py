"""The GPU rules, checked on the CPU: device names, a driver without a GPU, the evaluator's
device, XLA with determinism, TensorFlow's log level, and the GPU tier's own switch."""

import os
import stat
import subprocess
import sys

import pytest
import tensorflow as tf
from conftest import ROOT, fake_gpus, quiet, tiny_options, tiny_recipe

import v2.cli
from v2.cli import app, evaluator, flags, trainer
from v2.errors import UserError
from v2.nets.model import ModelConfig
from v2.runtime import devices
from v2.runtime.devices import Device
from v2.tools import flags as tool_flags
from v2.training import loop, preflight
from v2.training.recipe import Recipe

A100 = Device('GPU', 'NVIDIA A100-SXM4-80GB', (8, 0))
CPU = Device('CPU', 'AMD EPYC')


@pytest.mark.parametrize('name, parsed', [
    ('/gpu:1', ('GPU', 1)), ('GPU:1', ('GPU', 1)), ('gpu:1', ('GPU', 1)),
    ('/device:GPU:1', ('GPU', 1)), ('/physical_device:GPU:1', ('GPU', 1)),
    ('/job:localhost/replica:0/task:0/device:GPU:1', ('GPU', 1)),   # as TensorFlow prints it
    ('/job:worker/replica:0/task:3/device:GPU:0', ('GPU', 0)),
    (' /gpu:12 ', ('GPU', 12)), ('/cpu:0', ('CPU', 0)), ('/device:CPU:0', ('CPU', 0)),
])
def test_every_spelling_tensorflow_prints_names_its_device(name, parsed):
    assert devices.parse(name) == parsed
    assert devices.canonical(name) == '/%s:%d' % (parsed[0].lower(), parsed[1])


@pytest.mark.parametrize('name', ['cuda:0', 'gpu1', '/gpu', 'GPU:one', '/tpu:0', ''])
def test_any_other_device_name_is_refused_in_one_line(name):
    with pytest.raises(UserError, match='devices=.*: not a device name; write /gpu:N'):
        devices.parse(name)


def test_a_misspelt_gpu_is_refused_not_trained_on_the_cpu(session_data, tmp_path):
    status, line = app.call(trainer.main, [
        'run_trainer.py', '--data_path=%s' % session_data, '--ckpt_path=%s' % tmp_path,
        '--devices=cuda:0'], flags.TRAINER)
    assert status == 1
    assert line.startswith('run_trainer.py: error: --devices=cuda:0: not a device name')
    assert not os.listdir(tmp_path)


@pytest.fixture
def fake_driver(tmp_path, monkeypatch):
    """An nvidia-smi on PATH: a machine with NVIDIA's driver (TensorFlow sees no GPU here)."""
    folder = tmp_path / 'bin'
    folder.mkdir()
    smi = folder / 'nvidia-smi'
    smi.write_text('#!/bin/sh\necho "NVIDIA H100 80GB HBM3, 550.54, 81559 MiB"\n')
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv('PATH', '%s%s%s' % (folder, os.pathsep, os.environ['PATH']))
    monkeypatch.delenv('CUDA_VISIBLE_DEVICES')        # TensorFlow has started without GPUs
    return str(smi)


def test_a_driver_without_a_gpu_is_said_before_any_data_is_read(fake_driver, tmp_path,
                                                                 capsys):
    status, line = app.call(trainer.main, [
        'run_trainer.py', '--data_path=%s' % (tmp_path / 'missing'),
        '--ckpt_path=%s' % (tmp_path / 'ckpt')], flags.TRAINER)
    printed = capsys.readouterr().out
    assert status == 1 and 'missing' in line                 # the data was checked after it
    warning, = [x for x in printed.splitlines() if 'NVIDIA driver' in x]
    assert warning.startswith('warning: an NVIDIA driver is here (')
    assert 'TensorFlow sees no GPU' in warning
    assert 'pip install -r requirements-gpu.txt' in warning


@pytest.mark.parametrize('program, own, args', [
    (trainer.main, flags.TRAINER, []),
    (evaluator.main, flags.EVALUATOR, ['--ckpt_path=nowhere']),
])
def test_a_gpu_named_where_tensorflow_sees_none_is_refused_with_the_fix(fake_driver, tmp_path,
                                                                        program, own, args):
    status, line = app.call(program, ['prog', '--data_path=%s' % tmp_path, '--devices=/gpu:0',
                                      *args], own)
    assert status == 1
    assert line == ('prog: error: --devices=/gpu:0: no device /gpu:0 here: TensorFlow sees no '
                    'GPU though an NVIDIA driver is (%s); pip install -r requirements-gpu.txt '
                    '(TensorFlow with its CUDA libraries)' % devices.nvidia_driver())


def test_the_benchmark_says_so_too(fake_driver, capsys):
    from v2.tools import benchmark
    status, line = app.call(benchmark.main, ['benchmark', '--devices=GPU:0'], tool_flags.BENCHMARK)
    assert status == 1 and 'requirements-gpu.txt' in line


def test_gpus_hidden_on_purpose_are_not_warned_about(fake_driver, monkeypatch):
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '-1')
    lines = []
    devices.check_gpus_seen([], (), lines.append)
    assert lines == []
    with pytest.raises(UserError, match=r'no device /gpu:0 here: TensorFlow sees no GPU '
                                        r'\(CUDA_VISIBLE_DEVICES=-1 hides them\)'):
        devices.check_gpus_seen([], ('/gpu:0',), lines.append)


def test_without_a_driver_nothing_is_said(monkeypatch):
    monkeypatch.setattr(devices.os.path, 'exists', lambda path: False)
    monkeypatch.setenv('PATH', '')
    lines = []
    devices.check_gpus_seen([], (), lines.append)
    assert devices.nvidia_driver() is None and lines == []


@pytest.mark.parametrize('named, visible', [((), 'gpu0'), (('GPU:2',), 'gpu2'),
                                            (('/job:localhost/replica:0/task:0/device:GPU:1',),
                                             'gpu1')])
def test_the_evaluator_sees_only_its_own_gpu_with_memory_growth(monkeypatch, named, visible):
    calls = fake_gpus(monkeypatch)
    used = devices.setup_for_evaluation(named, quiet)
    assert calls == [('growth', visible, True), ('visible', (visible,))]
    assert len(used) == 1 and used[0].kind == 'GPU'


def test_the_evaluator_refuses_a_gpu_that_is_not_there_or_two(monkeypatch):
    fake_gpus(monkeypatch, count=2)
    with pytest.raises(UserError, match='devices=/gpu:5: no device /gpu:5 here; this machine '
                                        'has 2 GPUs'):
        devices.setup_for_evaluation(('/gpu:5',), quiet)
    with pytest.raises(UserError, match='the evaluator uses one device'):
        devices.setup_for_evaluation(('/gpu:0', '/gpu:1'), quiet)


def test_the_trainer_takes_tensorflows_full_name_for_a_gpu(monkeypatch):
    calls = fake_gpus(monkeypatch)
    devices.setup('default', devices=('/job:localhost/replica:0/task:0/device:GPU:2',), out=quiet)
    assert ('visible', ('gpu2',)) in calls


def test_tf32_is_off_inside_ieee_float32_and_restored_after():
    assert tf.config.experimental.tensor_float_32_execution_enabled()
    with devices.ieee_float32():
        assert not tf.config.experimental.tensor_float_32_execution_enabled()
    assert tf.config.experimental.tensor_float_32_execution_enabled()


def _recipe(**changes):
    return Recipe(**dict(dict(batch_size=8, num_iterations=2), **changes))


VGG = ModelConfig(model='vgg', num_layers=11)
RESNET = ModelConfig(num_layers=20)


def test_xla_with_determinism_and_max_pooling_on_a_gpu_is_refused_when_asked_for():
    with pytest.raises(UserError, match='jit_compile with deterministic for model=vgg on a '
                                        'GPU: XLA refuses the gradient of max pooling'):
        preflight.use_xla(True, _recipe(deterministic=True), VGG, 1, [A100], quiet)


def test_by_default_such_a_run_goes_without_xla_and_says_so_first():
    lines = []
    assert preflight.use_xla(None, _recipe(deterministic=True), VGG, 1, [A100],
                             lines.append) is False
    assert lines == ['note: XLA is off for this run (it would be on here): deterministic for '
                     'model=vgg on a GPU: XLA refuses the gradient of max pooling '
                     '(select-and-scatter) under op determinism']


@pytest.mark.parametrize('jit, recipe, config, used, expected', [
    (None, _recipe(deterministic=True), RESNET, [A100], True),     # no max pooling
    (None, _recipe(), VGG, [A100], True),                         # no determinism
    (None, _recipe(deterministic=True), VGG, [CPU], False),       # XLA off on CPUs anyway
    (True, _recipe(deterministic=True), VGG, [CPU], True),        # XLA:CPU has no such refusal
    (False, _recipe(deterministic=True), VGG, [A100], False),
])
def test_other_combinations_keep_their_xla(jit, recipe, config, used, expected):
    lines = []
    assert preflight.use_xla(jit, recipe, config, 1, used, lines.append) is expected
    assert lines == []


def test_the_quiet_import_replays_only_gpu_warnings_where_a_driver_is():
    captured = '\n'.join([
        'WARNING: All log messages before absl::InitializeLog() is called are written to STDERR',
        'I0000 00:00:1.0  1 cudart_stub.cc:31] Could not find cuda drivers on your machine.',
        'E0000 00:00:2.0  1 cuda_platform.cc:52] failed call to cuInit: CUDA_ERROR_NO_DEVICE',
        '  the rest of that message',
        'W0000 00:00:3.0  1 cpu_feature_guard.cc:1] an unrelated warning',
        'W0000 00:00:4.0  1 gpu_device.cc:2] Cannot dlopen some GPU libraries.',
        'I0000 00:00:5.0  1 gpu_device.cc:3] Created device /gpu:0 (an INFO line)'])
    assert v2.cli.replayed(captured, driver=True) == [
        'E0000 00:00:2.0  1 cuda_platform.cc:52] failed call to cuInit: CUDA_ERROR_NO_DEVICE',
        '  the rest of that message',
        'W0000 00:00:4.0  1 gpu_device.cc:2] Cannot dlopen some GPU libraries.']
    assert v2.cli.replayed(captured, driver=False) == []


@pytest.mark.slow                   # a process of its own: TensorFlow reads its level once
def test_tensorflows_warnings_reach_the_user_after_the_quiet_start():
    code = ('import os, v2.cli, tensorflow as tf; print(os.environ.get("TF_CPP_MIN_LOG_LEVEL"));'
            'it = iter(tf.data.Dataset.range(10).cache()); next(it); del it')
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ['None']         # restored: the processes it starts choose
    assert 'did not fully read the dataset being cached' in run.stderr    # a C++ warning
    assert 'cpu_feature_guard' not in run.stderr and 'cudart_stub' not in run.stderr


def test_the_fast_and_slow_tiers_hide_every_gpu(request):
    from conftest import gpu_tier
    assert os.environ['CUDA_VISIBLE_DEVICES'] == '-1'
    assert not tf.config.list_physical_devices('GPU')
    assert not gpu_tier(request.config)


@pytest.mark.parametrize('expression, selected', [
    ('gpu', True), ('gpu or slow', True), ('slow and gpu', True), ('not slow and not gpu', False),
    ('slow', False), ('not gpu', False), ('', False)])
def test_the_gpu_tier_is_what_the_mark_expression_selects(expression, selected):
    from conftest import gpu_tier

    class Config:
        @staticmethod
        def getoption(name):
            return expression
    assert gpu_tier(Config) is selected


@pytest.mark.slow
@pytest.mark.parametrize('changes', [dict(cutout=4),
                                     dict(mixup_alpha=1.0, cutmix_alpha=1.0, cutmix_prob=0.5)])
def test_the_device_path_with_xla_and_several_steps_a_call_trains_as_the_host_path(
        session_data, tmp_path, changes):
    """The GPU's way on one CPU: uint8 batches prepared (and mixed) inside an XLA-compiled
    step, two steps a call, against tf.data preparing them on the host. XLA's CPU kernels
    sum in another order than oneDNN's, so the weights agree to float32 rounding over 4
    steps: within rtol 1e-4 and 2e-4 absolute, as the batch-norm shifts start at 0 and
    move by sums of gradients that nearly cancel. Beyond the relative part, the rounding
    reached 1.1e-5 on an AVX2 CPU (TensorFlow 2.16.2) and 6.9e-5, in 7 of a conv kernel's
    2,304 weights, on the 2-core AMD EPYC with AVX512-BF16, whose oneDNN kernels sum in
    yet another order; a wrong batch would move every weight."""
    import numpy as np
    from conftest import model_weights
    recipe = tiny_recipe(num_iterations=4, **changes)
    host = loop.train(ModelConfig(num_layers=8), recipe,
                      tiny_options(tmp_path / 'host', prepare_batches='host'),
                      str(session_data), out=quiet)
    device = loop.train(ModelConfig(num_layers=8), recipe,
                        tiny_options(tmp_path / 'device', prepare_batches='device',
                                     steps_per_call=2, jit_compile=True),
                        str(session_data), out=quiet)
    a, b = model_weights(host.checkpoint), model_weights(device.checkpoint)
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-4, atol=2e-4, err_msg=key)
    assert host.last_metrics['loss'] == pytest.approx(device.last_metrics['loss'], rel=1e-4)
