"""The GPU tier (`python -m pytest -m gpu`): the programs on the visible GPUs.

Every test runs the trainer or the evaluator as a user would, in its own process, so
that each sets up its devices afresh (TensorFlow fixes them once per process). The
expected values come from the same programs on the CPU (CUDA_VISIBLE_DEVICES=-1)
with TF32 off: a GPU's float32 then differs from the CPU's only in the order of its
sums. After 6 steps of a ResNet-8 at rate 0.05 that is well below 1e-3 in any weight
(measured differences of float32 reduction orders are ~1e-6 relative per step and
grow at most geometrically over so few steps), so the weights are compared at
atol = rtol = 1e-3 and the logged losses at 1e-3. bfloat16 keeps an 8-bit mantissa
and is only checked to train. Where TensorFlow sees no GPU every test is skipped
with that reason.
"""

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, all_tensors, model_weights, run_script

GPUS = tf.config.list_physical_devices('GPU')
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not GPUS, reason='TensorFlow sees no GPU here (-m gpu runs on '
                                 'the visible GPUs; see README, "GPUs")')]
ON_CPU = {'CUDA_VISIBLE_DEVICES': '-1'}
# gpu_report runs the tier in the time its budget has left; when that is short it sets this,
# and the slowest tests are skipped with the reason.
slowest = pytest.mark.skipif(os.environ.get('CIFAR_GPU_TIER_SHORT') == '1',
                             reason='one of the slowest GPU tests: gpu_report had too little '
                             'time left for the whole tier')
TOLERANCE = dict(atol=1e-3, rtol=1e-3)


def compute_capability():
    return tuple(tf.config.experimental.get_device_details(GPUS[0]).get('compute_capability')
                 or (0, 0))


def train(data, ckpt, *flags, env=None, iterations=6):
    run = run_script('run_trainer.py', '--data_path=%s' % data, '--ckpt_path=%s' % ckpt,
                     '--num_layers=8', '--batch_size=8', '--num_iterations=%d' % iterations,
                     '--log_per_iterations=2', '--save_every=2', '--lr_values=0.05,0.005',
                     '--lr_boundaries=4', *flags, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def losses(run):
    return [float(line.split('loss ')[1].split()[0]) for line in run.stdout.splitlines()
            if line.startswith('step ') and ' loss ' in line]


def summary(run):
    """The run's first line: the network, the data, the precision and the device."""
    return [line for line in run.stdout.splitlines() if 'trainable parameters' in line][0]


def latest(ckpt):
    return tf.train.latest_checkpoint(str(ckpt))


def test_the_gpu_trains_the_weights_the_cpu_does(session_data, tmp_path):
    gpu = train(session_data, tmp_path / 'gpu', '--deterministic', '--tf32=false',
                '--jit_compile=false')
    cpu = train(session_data, tmp_path / 'cpu', '--deterministic', env=ON_CPU)
    assert 'compute capability' in summary(gpu) and 'one device: CPU' in summary(cpu)
    np.testing.assert_allclose(losses(gpu), losses(cpu), **TOLERANCE)
    a, b = model_weights(latest(tmp_path / 'gpu')), model_weights(latest(tmp_path / 'cpu'))
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_allclose(a[key], b[key], err_msg=key, **TOLERANCE)


def test_xla_on_and_off_train_the_same_weights(session_data, tmp_path):
    on = train(session_data, tmp_path / 'xla', '--tf32=false', '--jit_compile=true')
    off = train(session_data, tmp_path / 'plain', '--tf32=false', '--jit_compile=false')
    np.testing.assert_allclose(losses(on), losses(off), **TOLERANCE)
    a, b = model_weights(latest(tmp_path / 'xla')), model_weights(latest(tmp_path / 'plain'))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], err_msg=key, **TOLERANCE)


def test_steps_per_call_on_the_gpu_changes_no_weight(session_data, tmp_path):
    one = train(session_data, tmp_path / 'one', '--deterministic', '--tf32=false')
    two = train(session_data, tmp_path / 'two', '--deterministic', '--tf32=false',
                '--steps_per_call=2')
    assert losses(one) == losses(two)
    a, b = model_weights(latest(tmp_path / 'one')), model_weights(latest(tmp_path / 'two'))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_bfloat16_trains_on_cards_that_have_it(session_data, tmp_path):
    if compute_capability() < (8, 0):
        pytest.skip('bfloat16 needs compute capability 8.0; this card has %s'
                    % '.'.join(map(str, compute_capability())))
    run = train(session_data, tmp_path / 'bf16', '--precision=bfloat16', iterations=20)
    assert 'bfloat16' in run.stdout and 'training in float32 instead' not in run.stderr
    assert np.isfinite(losses(run)).all()
    weights = model_weights(latest(tmp_path / 'bf16'))
    assert all(w.dtype == np.float32 for w in weights.values())


@slowest
def test_a_save_and_resume_on_the_gpu_is_bit_exact(session_data, tmp_path):
    straight = tmp_path / 'straight'
    train(session_data, straight, '--deterministic', iterations=8)
    resumed = tmp_path / 'resumed'
    train(session_data, resumed, '--deterministic', iterations=4)
    again = train(session_data, resumed, '--deterministic', iterations=8)
    assert 'resuming at step 4' in again.stdout
    a, b = all_tensors(latest(straight)), all_tensors(latest(resumed))
    a.pop('save_counter/.ATTRIBUTES/VARIABLE_VALUE')
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize('spelling', ['/gpu:0'] + [
    pytest.param(s, marks=slowest)
    for s in ('GPU:0', '/device:GPU:0', '/job:localhost/replica:0/task:0/device:GPU:0')])
def test_every_spelling_of_a_gpu_trains_on_it(session_data, tmp_path, spelling):
    run = train(session_data, tmp_path, '--devices=%s' % spelling, iterations=2)
    assert 'compute capability' in summary(run), summary(run)


# The card's free memory as the driver sees it from this process (cuMemGetInfo on the primary
# context, which TensorFlow shares), before TensorFlow starts and after its first op: what
# TensorFlow took, whatever the container shows of other processes' ids.
MEMORY = r"""
import ctypes, sys
try:
    cuda = ctypes.CDLL('libcuda.so.1')
except OSError as e:
    sys.exit(print('skip no libcuda.so.1 to ask the driver (%s)' % e))

def check(status, call):
    if status:
        sys.exit(print('skip %s returned CUDA error %d: this card reports no memory to a '
                       'process' % (call, status)))

check(cuda.cuInit(0), 'cuInit')
device, context = ctypes.c_int(), ctypes.c_void_p()
check(cuda.cuDeviceGet(ctypes.byref(device), 0), 'cuDeviceGet')
check(cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device), 'cuDevicePrimaryCtxRetain')
check(cuda.cuCtxPushCurrent_v2(context), 'cuCtxPushCurrent')
free, total = ctypes.c_size_t(), ctypes.c_size_t()

def free_mib():
    check(cuda.cuMemGetInfo_v2(ctypes.byref(free), ctypes.byref(total)), 'cuMemGetInfo')
    return free.value / 2 ** 20

before = free_mib()
import tensorflow as tf
from v2.runtime import devices
devices.setup('default')
x = tf.random.normal([256, 256]) @ tf.random.normal([256, 256])
x.numpy()
growth = tf.config.experimental.get_memory_growth(tf.config.list_physical_devices('GPU')[0])
print(growth, before - free_mib(), total.value / 2 ** 20)
"""


def test_memory_growth_leaves_the_card_to_others():
    """Without memory growth TensorFlow reserves nearly the whole card at its first op; with it
    a process that multiplied two 256x256 matrices takes well under 4 GiB (and under half
    the card) of the memory the driver had free for it."""
    run = subprocess.run([sys.executable, '-c', MEMORY], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1]
    if last.startswith('skip '):
        pytest.skip(last[len('skip '):])
    growth, taken, total = last.split()
    assert growth == 'True'
    assert float(taken) < min(4096, float(total) / 2), (
        'TensorFlow took %.0f MiB of the %.0f MiB card' % (float(taken), float(total)))


@slowest
def test_the_evaluator_runs_beside_a_training_run_on_one_card(trained, session_data, tmp_path):
    args = ['--data_path=%s' % session_data, '--ckpt_path=%s' % (tmp_path / 'long'),
            '--num_layers=20', '--batch_size=64', '--num_iterations=100000',
            '--log_per_iterations=50', '--save_every=100000']
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    trainer = subprocess.Popen([sys.executable, str(ROOT / 'run_trainer.py'), *args], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and trainer.poll() is None:     # until it trains
            if os.path.isdir(tmp_path / 'long' / 'logs' / 'train'):
                break
            time.sleep(1)
        time.sleep(5)
        assert trainer.poll() is None, trainer.communicate()[1][-3000:]
        run = run_script('run_evaluator.py', '--data_path=%s' % session_data,
                         '--ckpt_path=%s' % (trained / 'ckpt'), '--devices=/gpu:0')
        assert run.returncode == 0, run.stderr[-3000:]
        assert 'test images' in run.stdout
        assert trainer.poll() is None, 'the trainer stopped while the evaluator ran'
    finally:
        trainer.terminate()
        trainer.communicate(timeout=120)


def test_mirrored_trains_over_every_visible_gpu(session_data, tmp_path):
    if len(GPUS) < 2:
        pytest.skip('mirrored needs two GPUs; %d visible' % len(GPUS))
    run = train(session_data, tmp_path, '--distribution_strategy=mirrored',
                '--batch_size=%d' % (4 * len(GPUS)), iterations=4)
    assert 'mirrored over %d replicas' % len(GPUS) in run.stdout
