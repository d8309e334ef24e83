"""Shared fixtures: tiny CIFAR-10 files in a temp dir, the real-image folder, script runs."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

# Quiet TensorFlow in this process; the scripts run below quiet themselves (v2/__init__.py).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


ROOT = pathlib.Path(__file__).resolve().parents[1]
# The partial real CIFAR-10 set lives beside the checkout (see README, "Tests").
REAL_DATA = pathlib.Path(os.environ.get('CIFAR10_REAL_DATA', ROOT.parent / 'shared' / 'cifar10'))
sys.path.insert(0, str(ROOT))

TRAIN_FILES = ['data_batch_%d.bin' % i for i in range(1, 6)]


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


@pytest.fixture
def tiny_data(tmp_path):
    return write_cifar(tmp_path / 'data')


@pytest.fixture
def real_data():
    if not (REAL_DATA / 'data_batch_1.bin').exists():
        pytest.skip('the real CIFAR-10 images are not beside the checkout (%s)' % REAL_DATA)
    return REAL_DATA


def run_script(script, *args, timeout=300):
    """Runs a script (run_trainer.py) or a module (v2.benchmark) as a user would."""
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    command = [str(ROOT / script)] if script.endswith('.py') else ['-m', script]
    return subprocess.run([sys.executable, *command, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def error_lines(stderr):
    """Our one-line messages on stderr (TensorFlow may print start-up notes before them)."""
    return [line for line in stderr.splitlines() if ': error: ' in line]
