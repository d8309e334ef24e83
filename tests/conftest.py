"""Shared fixtures: tiny CIFAR-10 files, one trained ResNet-8 per test run, script runs.

Three tiers: `python -m pytest` runs the fast one (unit, numeric and in-process
program tests); `python -m pytest -m slow` the tests marked slow (subprocesses,
faults and signals, distributed training, experiments, the largest nets). Both run
on the CPU with every GPU hidden (CUDA_VISIBLE_DEVICES=-1, inherited by the programs
they start), so that they pass alike on a GPU machine: their numbers are compared
with numpy in IEEE float32, and two local workers cannot share one GPU. Their
process has two logical CPUs, for in-process tests of two replicas (the default
strategy computes on the first).
`python -m pytest -m gpu` runs the GPU tier (tests/test_gpu.py) on the visible GPUs,
each test skipped with the reason where TensorFlow sees none.
"""

import os
import pathlib
import platform
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest


def gpu_tier(config):
    """Whether the -m expression selects the gpu tests (`-m gpu`, `-m "gpu or slow"`)."""
    return bool(re.search(r'(?<!not )\bgpu\b', config.getoption('markexpr') or ''))


def pytest_configure(config):
    # TensorFlow's oneDNN kernels on every x86 CPU, as the commands ask for them (v2.cli):
    # the tests then compute as the programs do, and TensorFlow reads this when it loads.
    if platform.machine().lower() in ('x86_64', 'amd64'):
        os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')
    if gpu_tier(config):
        import tensorflow as tf
        for gpu in tf.config.list_physical_devices('GPU'):     # room for the programs it starts
            tf.config.experimental.set_memory_growth(gpu, True)
    else:
        os.environ['CUDA_VISIBLE_DEVICES'] = '-1'
        # Two logical CPUs, for in-process tests of two replicas.
        import tensorflow as tf
        tf.config.set_logical_device_configuration(
            tf.config.list_physical_devices('CPU')[0],
            [tf.config.LogicalDeviceConfiguration()] * 2)


def pytest_report_header(config):
    if gpu_tier(config):
        return 'GPU tier: the tests marked gpu run on the visible GPUs'
    return ('GPUs hidden (CUDA_VISIBLE_DEVICES=-1): this tier runs on the CPU; '
            '-m gpu runs the GPU tier')

# Quiet TensorFlow in this process; the scripts run below quiet themselves (v2/cli).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The partial real CIFAR-10 set lives beside the checkout (see README, "Tests").
REAL_DATA = pathlib.Path(os.environ.get('CIFAR10_REAL_DATA', ROOT.parent / 'shared' / 'cifar10'))
sys.path.insert(0, str(ROOT))

TRAIN_FILES = ['data_batch_%d.bin' % i for i in range(1, 6)]


@pytest.fixture(autouse=True)
def no_op_determinism_after():
    """A test whose run was --deterministic leaves TensorFlow's op determinism off again: it
    is process-wide, and unseeded random ops fail under it in the tests after."""
    yield
    from tensorflow.python.framework import config
    if config.is_op_determinism_enabled():
        config.disable_op_determinism()


def record_bytes(labels, images):
    """Official binary records: label byte + R, G, B planes of uint8 HWC images."""
    planes = np.transpose(images, (0, 3, 1, 2)).reshape(len(labels), -1)
    return np.concatenate([np.asarray(labels, np.uint8)[:, None], planes], axis=1).tobytes()


def write_cifar(folder, train_per_file=16, test_records=24, seed=0):
    """Writes the six CIFAR-10 files with random images; returns the folder."""
    rng = np.random.default_rng(seed)
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, count in [(n, train_per_file) for n in TRAIN_FILES] + [('test_batch.bin',
                                                                      test_records)]:
        labels = np.arange(count) % 10
        images = rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)
        (folder / name).write_bytes(record_bytes(labels, images))
    return folder


def tiny_options(folder, **changes):
    """RunOptions of a tiny in-process run writing into `folder`."""
    from v2.training.options import RunOptions
    settings = dict(ckpt_path=str(folder / 'ckpt'), log_path=str(folder / 'logs'),
                    log_per_iterations=3)
    settings.update(changes)
    return RunOptions(**settings)


def tiny_recipe(**changes):
    """A Recipe of a few steps of batch 8, the rate falling at step 4."""
    from v2.training.recipe import Recipe
    from v2.training.schedule import Schedule
    settings = dict(batch_size=8, num_iterations=6,
                    schedule=Schedule(boundaries=(4,), values=(0.05, 0.005)))
    settings.update(changes)
    return Recipe(**settings)


def quiet(line):
    """An `out` that prints nothing."""


def fake_gpus(monkeypatch, count=3, name='NVIDIA H100 80GB HBM3'):
    """TensorFlow's device calls replaced by `count` made-up GPUs 'gpu0'...; returns the list
    the calls are recorded in: ('growth', gpu, on), ('visible', gpus), ('tf32', on)."""
    import tensorflow as tf
    calls = []
    gpus = ['gpu%d' % i for i in range(count)]
    monkeypatch.setattr(tf.config, 'list_physical_devices', lambda kind=None: gpus)
    monkeypatch.setattr(tf.config.experimental, 'set_memory_growth',
                        lambda gpu, on: calls.append(('growth', gpu, on)))
    monkeypatch.setattr(tf.config, 'set_visible_devices',
                        lambda used, kind: calls.append(('visible', tuple(used))))
    monkeypatch.setattr(tf.config.experimental, 'enable_tensor_float_32_execution',
                        lambda on: calls.append(('tf32', on)))
    monkeypatch.setattr(tf.config.experimental, 'get_device_details',
                        lambda gpu: {'device_name': name, 'compute_capability': (9, 0)})
    return calls


@pytest.fixture(scope='session')
def session_data(tmp_path_factory):
    """Tiny CIFAR-10 files shared by the whole run (80 training, 24 test images); read only."""
    return write_cifar(tmp_path_factory.mktemp('data') / 'data')


@pytest.fixture
def tiny_data(tmp_path):
    """Tiny CIFAR-10 files of this test's own, to damage at will."""
    return write_cifar(tmp_path / 'data')


@pytest.fixture(scope='session')
def trained(tmp_path_factory, session_data):
    """A ResNet-8 trained 6 steps on session_data (checkpoints at 3 and 6); read only."""
    from v2.nets.model import ModelConfig
    from v2.training import loop
    root = tmp_path_factory.mktemp('trained')
    loop.train(ModelConfig(num_layers=8), tiny_recipe(),
               tiny_options(root, save_every=3), str(session_data), out=quiet)
    return root


@pytest.fixture(scope='session')
def validated(tmp_path_factory, session_data):
    """A ResNet-8 trained 8 steps holding out 16 images, logged, evaluated and saved every 2
    steps (its best checkpoint kept apart); with every record it made; read only."""
    from v2.nets.model import ModelConfig
    from v2.training import loop
    root = tmp_path_factory.mktemp('validated')
    records = []
    loop.train(ModelConfig(num_layers=8), tiny_recipe(num_iterations=8, validation_split=16),
               tiny_options(root, eval_every=2, save_every=2, log_per_iterations=2),
               str(session_data), out=quiet, on_record=lambda *r: records.append(r))
    return root, records


@pytest.fixture(scope='session')
def two_replicas():
    """A mirrored Cluster over the two logical CPUs, one for every in-process test: a
    second MirroredStrategy in the same process numbers its collectives as the first did,
    and its all-reduces then fail ('Shape mismatch in the collective instance 100')."""
    from v2.runtime import distribution
    cluster = distribution.make_cluster('mirrored', cpu_devices=2)
    assert cluster.replicas == 2
    return cluster


@pytest.fixture(scope='session')
def averaged_run(tmp_path_factory, session_data):
    """A ResNet-8 trained 4 steps with weight averages (ema_decay=0.5), saved at every step
    and evaluated on the test set at step 4; (its folder, the recipe, its records, the lines
    it printed); read only."""
    from v2.nets.model import ModelConfig
    from v2.training import loop
    root = tmp_path_factory.mktemp('averaged')
    recipe = tiny_recipe(num_iterations=4, ema_decay=0.5)
    records, lines = [], []
    loop.train(ModelConfig(num_layers=8), recipe,
               tiny_options(root, eval_every=4, save_every=1, log_per_iterations=1),
               str(session_data), out=lines.append, on_record=lambda *r: records.append(r))
    return root, recipe, records, lines


def numpy_test_set(folder):
    """(the test images less the training images' mean pixel, float64; their labels), read
    from the CIFAR-10 files with numpy alone, as the official format lays records out."""
    def split(names):
        raw = np.concatenate([np.fromfile(pathlib.Path(folder) / n, np.uint8).reshape(-1, 3073)
                              for n in names])
        return (raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float64),
                raw[:, 0].astype(np.int64))
    train_images, _ = split(TRAIN_FILES)
    images, labels = split(['test_batch.bin'])
    return images - train_images.mean(axis=0), labels


def averaged_and_live_nets(root, recipe):
    """Two ResNet-8s of the averaged_run: one holding numpy's weight averages
    (numpy_ref.weight_averages of the initial weights, which the recipe's seed draws, and
    of the checkpoint of every step), one the live weights of the last step. Read with
    TensorFlow's own tf.train.Checkpoint, not through v2's Restorer or WeightAverage."""
    import numpy_ref as ref
    import tensorflow as tf

    from v2.nets import model
    config = model.ModelConfig(num_layers=8)
    live = model.build(config, seed=recipe.seed)
    initial = [v.numpy() for v in live.variables]
    steps = []
    for step in range(1, recipe.num_iterations + 1):
        tf.train.Checkpoint(model=live).read(
            str(pathlib.Path(root) / 'ckpt' / ('ckpt-%d' % step))).expect_partial()
        steps.append([v.numpy() for v in live.variables])
    averaged = model.build(config)
    for variable, value in zip(averaged.variables,
                               ref.weight_averages(initial, steps, recipe.ema_decay)):
        variable.assign(value.astype(np.float32))
    return averaged, live


@pytest.fixture
def trained_copy(trained, tmp_path):
    """A copy of the trained run, for tests that resume or damage it."""
    shutil.copytree(trained / 'ckpt', tmp_path / 'ckpt')
    return tmp_path


@pytest.fixture
def real_data():
    if not (REAL_DATA / 'data_batch_1.bin').exists():
        pytest.skip('the real CIFAR-10 images are not beside the checkout (%s)' % REAL_DATA)
    return REAL_DATA


def run_script(script, *args, timeout=300, env=None):
    """Runs a script (run_trainer.py) or a module (v2.tools.benchmark) as a user would."""
    environment = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    environment.update(env or {})
    command = [str(ROOT / script)] if script.endswith('.py') else ['-m', script]
    return subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=environment,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr):
    """Our one-line messages on stderr (TensorFlow may print start-up notes before them)."""
    return [line for line in stderr.splitlines() if ': error: ' in line]


def model_weights(prefix):
    """The model/ tensors of a checkpoint, by name."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith('model/')}


def all_tensors(prefix):
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(prefix))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}
