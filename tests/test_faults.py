"""The faults of long runs on shared machines: a second trainer on a busy run folder, a
lock left by a killed run, a torn newest checkpoint, out of device memory. In this
process (fast), and with real processes stopped and killed (slow)."""

import errno
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, all_tensors, error_lines, quiet, run_script, tiny_options, tiny_recipe
from test_cli import TINY_RUN, evaluate_in_process, snapshot, train_in_process

from v2.errors import UserError
from v2.nets.model import ModelConfig
from v2.nets.resnet import ResNet
from v2.runtime import devices, lock, memory
from v2.training import loop

TINY = ModelConfig(num_layers=8)
HOST = socket.gethostname()


def trainer_args(data, ckpt, steps=8):
    return ['--data_path=%s' % data, '--ckpt_path=%s' % ckpt, '--num_iterations=%d' % steps,
            *TINY_RUN]


def dead_pid():
    """The process id of a process that has ended."""
    process = subprocess.Popen(['true'])
    process.wait()
    return process.pid


def truncate(path):
    """Cuts a file to half its length, as a copy cut off would; returns what is left."""
    torn = path.read_bytes()[:path.stat().st_size // 2]
    path.write_bytes(torn)
    return torn


# --- one writer per run folder -------------------------------------------------------------

def test_a_second_trainer_on_a_busy_folder_is_refused_naming_the_holder(trained_copy,
                                                                        session_data):
    ckpt = trained_copy / 'ckpt'
    with lock.RunLock(str(ckpt), out=quiet):       # this process holds it, as a trainer would
        before = snapshot(ckpt)
        status, line = train_in_process(*trainer_args(session_data, ckpt))
        assert snapshot(ckpt) == before
    assert status == 1 and '\n' not in line, line
    assert line.startswith('run_trainer.py: error: --ckpt_path=%s is in use by another trainer '
                           '(pid %d on host %s, since ' % (ckpt, os.getpid(), HOST)), line
    assert not (ckpt / lock.FILE).exists()          # released, and removed, with the block
    status, line = train_in_process(*trainer_args(session_data, ckpt))
    assert status == 0, line
    assert not (ckpt / lock.FILE).exists()


def test_the_lock_of_a_run_that_died_is_taken_over_with_a_note(trained_copy, session_data):
    ckpt = trained_copy / 'ckpt'
    pid = dead_pid()
    (ckpt / lock.FILE).write_text('pid=%d host=%s since=2026-01-01T00:00:00Z\n' % (pid, HOST))
    lines = []
    result = loop.train(TINY, tiny_recipe(num_iterations=7), tiny_options(trained_copy),
                        str(session_data), out=lines.append)
    assert result.step == 7
    assert ('note: took over %s from pid %d on host %s, since 2026-01-01T00:00:00Z, which ended '
            'without releasing it' % (ckpt / lock.FILE, pid, HOST)) in lines[0]
    assert not (ckpt / lock.FILE).exists()


@pytest.mark.parametrize('holder, refused', [
    ('parent', 'is in use by another trainer (pid {pid} on host {host}'),
    ('elsewhere', 'this file system has no locks, so a trainer on another machine cannot be '
                  'checked from here: if it no longer runs, delete {path}'),
    ('dead', None),
])
def test_without_file_locks_the_holders_process_decides(tmp_path, monkeypatch, holder, refused):
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, 'No locks available')
    monkeypatch.setattr(lock.fcntl, 'flock', no_locks)
    pid, host = {'parent': (os.getppid(), HOST), 'elsewhere': (os.getppid(), 'elsewhere'),
                 'dead': (dead_pid(), HOST)}[holder]
    path = tmp_path / lock.FILE
    path.write_text('pid=%d host=%s since=2026-01-01T00:00:00Z\n' % (pid, host))
    notes = []
    if refused:
        with pytest.raises(UserError) as caught:
            lock.RunLock(str(tmp_path), out=notes.append).acquire()
        assert refused.format(pid=pid, host=host, path=path) in str(caught.value)
        assert path.read_text().startswith('pid=%d ' % pid)
    else:
        taken = lock.RunLock(str(tmp_path), out=notes.append).acquire()
        assert path.read_text().startswith('pid=%d host=%s ' % (os.getpid(), HOST))
        assert len(notes) == 1 and 'took over' in notes[0]
        taken.release()
        assert not path.exists()


@pytest.mark.parametrize('busy', [True, False])
def test_another_users_lock_is_named_busy_or_left_behind(tmp_path, monkeypatch, busy):
    path = tmp_path / lock.FILE
    path.write_text('pid=4242 host=gpu3 since=2026-01-01T00:00:00Z\n')
    real_open = os.open

    def open_as_another_user(name, flags, *args):
        if str(name) == str(path) and flags & os.O_RDWR:
            raise PermissionError(errno.EACCES, 'Permission denied')
        return real_open(name, flags, *args)
    monkeypatch.setattr(lock.os, 'open', open_as_another_user)
    holder = real_open(path, os.O_RDONLY)
    try:
        if busy:
            lock.fcntl.flock(holder, lock.fcntl.LOCK_EX)
        with pytest.raises(UserError) as caught:
            lock.RunLock(str(tmp_path), out=quiet).acquire()
    finally:
        os.close(holder)
    assert ('is in use by another trainer (pid 4242 on host gpu3' if busy else
            'its lock %s, left by pid 4242 on host gpu3, since 2026-01-01T00:00:00Z, cannot be '
            'written by this user; delete it if that run has ended' % path) in str(caught.value)


# --- a torn newest checkpoint ----------------------------------------------------------------

def _killed_at(step):
    def on_step(current):
        if current == step:
            raise KeyboardInterrupt('killed')
    return on_step


def test_a_torn_newest_checkpoint_is_set_aside_and_the_run_resumes_bit_for_bit(session_data,
                                                                                tmp_path):
    recipe = tiny_recipe(num_iterations=8, deterministic=True)
    options = dict(log_per_iterations=2, save_every=2)
    straight = loop.train(TINY, recipe, tiny_options(tmp_path / 'a', **options),
                          str(session_data), out=quiet)
    with pytest.raises(KeyboardInterrupt):        # killed at step 7, after the save of step 6
        loop.train(TINY, recipe, tiny_options(tmp_path / 'b', **options), str(session_data),
                   out=quiet, on_step=_killed_at(7))
    ckpt = tmp_path / 'b' / 'ckpt'
    assert not (ckpt / lock.FILE).exists()        # released on the way out
    torn = truncate(ckpt / 'ckpt-6.data-00000-of-00001')
    index = (ckpt / 'ckpt-6.index').read_bytes()
    lines = []
    resumed = loop.train(TINY, recipe, tiny_options(tmp_path / 'b', **options),
                         str(session_data), out=lines.append)
    notes = [line for line in lines if line.startswith('note: %s' % (ckpt / 'ckpt-6'))]
    assert len(notes) == 1 and 'not a readable checkpoint of this trainer' in notes[0]
    assert notes[0].endswith('set aside as ckpt-6.data-00000-of-00001.unreadable, '
                             'ckpt-6.index.unreadable, and the run resumes from %s'
                             % (ckpt / 'ckpt-4'))
    assert any('resuming at step 4 from %s' % (ckpt / 'ckpt-4') in line for line in lines)
    # Set aside, never deleted: the bytes are all there under the new names.
    assert (ckpt / 'ckpt-6.data-00000-of-00001.unreadable').read_bytes() == torn
    assert (ckpt / 'ckpt-6.index.unreadable').read_bytes() == index
    a, b = all_tensors(straight.checkpoint), all_tensors(resumed.checkpoint)
    assert a.keys() == b.keys() and any(k.startswith('optimizer/') for k in a)
    a.pop('save_counter/.ATTRIBUTES/VARIABLE_VALUE')
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    listed = tf.train.get_checkpoint_state(str(ckpt)).all_model_checkpoint_paths
    assert [os.path.basename(p) for p in listed] == ['ckpt-2', 'ckpt-4', 'ckpt-6', 'ckpt-8']


def test_when_no_checkpoint_reads_the_trainer_refuses_and_touches_nothing(trained_copy,
                                                                          session_data):
    ckpt = trained_copy / 'ckpt'
    for step in (3, 6):
        truncate(ckpt / ('ckpt-%d.data-00000-of-00001' % step))
    before = snapshot(ckpt)
    status, line = train_in_process(*trainer_args(session_data, ckpt))
    assert status == 1 and '\n' not in line
    assert '%s: not a readable checkpoint of this trainer' % (ckpt / 'ckpt-6') in line, line
    assert snapshot(ckpt) == before


def test_a_newest_checkpoint_that_reads_but_is_not_the_trainers_is_refused_not_set_aside(
        trained_copy, session_data):
    """A whole checkpoint of another program (no network recorded) as the newest: only a
    checkpoint whose files do not read is set aside; this one is refused, touching nothing."""
    ckpt = trained_copy / 'ckpt'
    other = tf.train.Checkpoint(weights=tf.Variable([1.0, 2.0])).write(str(ckpt / 'ckpt-9'))
    state = tf.train.get_checkpoint_state(str(ckpt))
    tf.compat.v1.train.update_checkpoint_state(
        str(ckpt), other, list(state.all_model_checkpoint_paths) + [other])
    before = snapshot(ckpt)
    status, line = train_in_process(*trainer_args(session_data, ckpt))
    assert status == 1 and '\n' not in line
    assert 'not a checkpoint of this trainer (it records no network)' in line, line
    assert snapshot(ckpt) == before


def test_a_dry_run_over_a_torn_checkpoint_says_so_and_renames_nothing(trained_copy, session_data,
                                                                      capsys):
    ckpt = trained_copy / 'ckpt'
    truncate(ckpt / 'ckpt-6.data-00000-of-00001')
    before = snapshot(ckpt)
    status, line = train_in_process(*trainer_args(session_data, ckpt), '--dry_run')
    assert status == 0, line
    out = capsys.readouterr().out
    assert ('note: %s: not a readable checkpoint of this trainer' % (ckpt / 'ckpt-6')) in out
    assert 'would resume at step 3 from %s' % (ckpt / 'ckpt-3') in out
    assert snapshot(ckpt) == before


def test_the_evaluator_reports_a_torn_checkpoint_and_evaluates_the_others(trained_copy,
                                                                          session_data, capsys):
    ckpt = trained_copy / 'ckpt'
    truncate(ckpt / 'ckpt-6.data-00000-of-00001')
    checkpoints = {n: b for n, b in snapshot(ckpt).items() if n.startswith('ckpt')}
    status, line = evaluate_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt,
                                       '--all_checkpoints')
    assert status == 0, line
    out = capsys.readouterr().out.splitlines()
    skipped = [line for line in out if line.startswith('skipped %s: ' % (ckpt / 'ckpt-6'))]
    assert len(skipped) == 1 and ('not a readable checkpoint' in skipped[0]
                                  or 'could not be restored' in skipped[0]), out
    rows = [line for line in out if line.rstrip().endswith(str(ckpt / 'ckpt-3'))]
    assert len(rows) == 1 and not any(line.rstrip().endswith(str(ckpt / 'ckpt-6'))
                                      for line in out if '%' in line)
    # The evaluator only reads: the torn checkpoint stays where it was.
    assert {n: b for n, b in snapshot(ckpt).items() if n.startswith('ckpt')} == checkpoints


# --- out of memory ---------------------------------------------------------------------------

OOM = ('OOM when allocating tensor with shape[8,16,32,32] and type float on '
       '/job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc')


def _out_of_memory_when_training(monkeypatch):
    """The forward pass of the training step raises TensorFlow's out-of-memory error."""
    forward = ResNet.__call__

    def call(self, images, training=False, trace=None):
        if training:
            raise tf.errors.ResourceExhaustedError(None, None, OOM)
        return forward(self, images, training, trace)
    monkeypatch.setattr(ResNet, '__call__', call)


@pytest.mark.parametrize('logs', ['new', 'there'])
def test_out_of_memory_in_the_step_is_one_line_and_the_folder_stays(trained, trained_copy,
                                                                    session_data, monkeypatch,
                                                                    logs):
    ckpt = trained_copy / 'ckpt'
    if logs == 'there':                     # the run's logs beside its checkpoints, as by default
        shutil.copytree(trained / 'logs', ckpt / 'logs')
    before = snapshot(ckpt)
    _out_of_memory_when_training(monkeypatch)
    status, line = train_in_process(*trainer_args(session_data, ckpt))
    assert status == 1 and '\n' not in line, line
    assert line == ('run_trainer.py: error: out of memory on GPU:0 training ResNet-8 at batch 8 '
                    'in float32: try a smaller --batch_size, --precision=bfloat16 (or float16) '
                    'or more devices (--distribution_strategy=mirrored); the last good '
                    'checkpoint is %s and nothing written was lost' % (ckpt / 'ckpt-6'))
    # The checkpoints and their index are as they were, the lock is gone, and the logs the
    # run began (TensorBoard's run and HParams record, metrics.csv) are gone with it.
    assert snapshot(ckpt) == before


def test_out_of_memory_in_an_evaluation_during_training_names_its_batch(trained_copy,
                                                                         session_data,
                                                                         monkeypatch):
    forward = ResNet.__call__

    def call(self, images, training=False, trace=None):
        if not training:
            raise tf.errors.ResourceExhaustedError(None, None, OOM)
        return forward(self, images, training, trace)
    monkeypatch.setattr(ResNet, '__call__', call)
    with pytest.raises(UserError) as caught:
        loop.train(TINY, tiny_recipe(num_iterations=9),
                   tiny_options(trained_copy, eval_every=3, eval_batch_size=12),
                   str(session_data), out=quiet)
    assert caught.value.flag_message() == (
        'out of memory on GPU:0 evaluating ResNet-8 at batch 12 in float32: try a smaller '
        '--eval_batch_size, --precision=bfloat16 (or float16) or more devices '
        '(--distribution_strategy=mirrored); the last good checkpoint is %s and nothing '
        'written was lost' % (trained_copy / 'ckpt' / 'ckpt-6'))


def test_out_of_memory_names_the_gpu_and_its_peak(monkeypatch):
    monkeypatch.setattr(tf.config.experimental, 'get_memory_info',
                        lambda device: {'current': 0, 'peak': 15 * 2 ** 30 + 2 ** 29})
    gpu = devices.Device('GPU', 'Tesla V100-SXM2-16GB', (7, 0))
    error = memory.out_of_memory(tf.errors.ResourceExhaustedError(None, None, OOM),
                                 doing='training', network='ResNet-1202', batch_size=128,
                                 precision='bfloat16', used=[gpu], checkpoints=True)
    assert str(error) == ('out of memory on GPU:0 (Tesla V100-SXM2-16GB, peak 15.50 GiB in use) '
                          'training ResNet-1202 at batch 128 in bfloat16: try a smaller '
                          'batch_size or more devices (distribution_strategy=mirrored); no '
                          'checkpoint was written yet')


def test_out_of_memory_at_the_evaluators_first_batch_is_one_line(trained_copy, session_data,
                                                                 monkeypatch):
    ckpt = trained_copy / 'ckpt'
    before = snapshot(ckpt)
    forward = ResNet.__call__

    def call(self, images, training=False, trace=None):
        raise tf.errors.ResourceExhaustedError(None, None, OOM.replace('GPU:0', 'CPU:0'))
    monkeypatch.setattr(ResNet, '__call__', call)
    status, line = evaluate_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt,
                                       '--all_checkpoints', '--eval_batch_size=12')
    monkeypatch.setattr(ResNet, '__call__', forward)
    assert status == 1 and '\n' not in line, line
    assert line.startswith('run_evaluator.py: error: out of memory on CPU:0 (')
    assert line.endswith(') evaluating ResNet-8 at batch 12 in float32: try a smaller '
                         '--eval_batch_size or --precision=bfloat16 (or float16); nothing was '
                         'written'), line
    assert snapshot(ckpt) == before               # no TensorBoard run, no JSON


def test_out_of_memory_in_the_benchmark_is_one_line(monkeypatch):
    from v2.cli import app
    from v2.tools import benchmark, flags

    def measure(*args):
        raise tf.errors.ResourceExhaustedError(None, None, OOM)
    monkeypatch.setattr(benchmark, 'measure', measure)
    status, line = app.call(benchmark.main, ['benchmark', '--num_layers=56', '--batch_size=128'],
                            flags.BENCHMARK)
    assert (status, line) == (1, 'benchmark: error: out of memory on GPU:0 timing ResNet-56 at '
                                 'batch 128 in float32: try a smaller --batch_size, '
                                 '--precision=bfloat16 (or float16) or more devices '
                                 '(--distribution_strategy=mirrored); nothing was written')


# --- the slow tier: real processes, stopped and killed ----------------------------------------

def _start_trainer(*args):
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    return subprocess.Popen([sys.executable, str(ROOT / 'run_trainer.py'), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_second_trainer_beside_a_running_one_and_after_it_is_killed(session_data, tmp_path):
    ckpt = tmp_path / 'ckpt'
    args = ['--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt, '--num_layers=8',
            '--batch_size=8', '--log_per_iterations=10', '--save_every=10']
    first = _start_trainer(*args, '--num_iterations=1000000')
    try:
        deadline = time.time() + 180
        while not (ckpt / 'checkpoint').exists():
            assert first.poll() is None and time.time() < deadline, first.stderr.read()
            time.sleep(0.2)
        first.send_signal(signal.SIGSTOP)         # frozen mid-run: it holds the folder
        time.sleep(0.5)
        before = snapshot(ckpt)
        second = run_script('run_trainer.py', *args, '--num_iterations=20')
        assert snapshot(ckpt) == before
        assert second.returncode == 1 and 'Traceback' not in second.stderr
        lines = error_lines(second.stderr)
        assert len(lines) == 1 and ('--ckpt_path=%s is in use by another trainer (pid %d on host '
                                    '%s' % (ckpt, first.pid, HOST)) in lines[0], second.stderr
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        first.kill()
        first.wait(timeout=60)
    assert (ckpt / lock.FILE).exists()              # left behind by the killed run
    last = int(tf.train.latest_checkpoint(str(ckpt)).rsplit('-', 1)[1])
    third = run_script('run_trainer.py', *args, '--num_iterations=%d' % (last + 10))
    assert third.returncode == 0, third.stderr
    assert ('note: took over %s from pid %d on host %s' % (ckpt / lock.FILE, first.pid, HOST)
            in third.stdout)
    assert 'resuming at step %d' % last in third.stdout
    assert not (ckpt / lock.FILE).exists()
