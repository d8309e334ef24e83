"""Nothing lost: killed runs resume exactly, cut-off saves, non-finite losses, full disks."""

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from conftest import ROOT, run_script
from v2 import checkpoint, model, train
from v2.errors import UserError
from v2.schedule import Schedule

TINY_RUN = ['--num_layers=8', '--batch_size=8', '--lr_values=0.05,0.005', '--lr_boundaries=1200']


def _trainer(*args):
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    return subprocess.Popen([sys.executable, str(ROOT / 'run_trainer.py'), *args], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, 'no %s after %d s' % (path, timeout)
        time.sleep(0.05)


def _tensors(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def test_a_killed_run_resumes_to_the_same_weights_bit_for_bit(tiny_data, tmp_path):
    args = ['--data_path=%s' % tiny_data, '--num_iterations=2000', '--log_per_iterations=500',
            '--deterministic', *TINY_RUN]
    straight = run_script('run_trainer.py', '--ckpt_path=%s' % (tmp_path / 'straight'), *args)
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / 'killed'
    process = _trainer('--ckpt_path=%s' % killed, *args)
    try:
        _wait_for(killed / 'ckpt-1000.index', process)
        time.sleep(0.3)                                   # between two checkpoints
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert not (killed / 'ckpt-2000.index').exists()
    resumed = run_script('run_trainer.py', '--ckpt_path=%s' % killed, *args)
    assert resumed.returncode == 0, resumed.stderr
    assert 'resuming at step' in resumed.stdout
    a, b = _tensors(str(tmp_path / 'straight' / 'ckpt-2000')), _tensors(str(killed / 'ckpt-2000'))
    assert a.keys() == b.keys() and any(k.startswith('optimizer/') for k in a)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_killing_during_saves_never_breaks_the_last_checkpoint(tiny_data, tmp_path):
    folder = tmp_path / 'ckpt'
    rng = random.Random(0)
    args = ['--data_path=%s' % tiny_data, '--ckpt_path=%s' % folder, '--num_iterations=1000000',
            '--log_per_iterations=1', '--max_to_keep=2', *TINY_RUN]
    for _ in range(4):
        process = _trainer(*args)
        try:
            _wait_for(folder / 'checkpoint', process)
            time.sleep(rng.uniform(0.5, 2.0))             # saving every step: most kills hit one
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            process.kill()
        latest = tf.train.latest_checkpoint(str(folder))
        saved = checkpoint.Saved(latest)                  # the index names a whole checkpoint
        net = model.build(saved.config)
        checkpoint.restore(checkpoint.make(net, tf.Variable(saved.pixel_mean)), latest)
    assert saved.step > 1


def test_partial_saves_are_removed(tmp_path):
    (tmp_path / 'ckpt-7_temp').mkdir()
    (tmp_path / 'ckpt-7_temp' / 'part-00000-of-00001.index').write_bytes(b'x')
    (tmp_path / 'ckpt-6.index').write_bytes(b'keep')
    assert checkpoint.remove_partial_saves(str(tmp_path)) == [str(tmp_path / 'ckpt-7_temp')]
    assert sorted(os.listdir(tmp_path)) == ['ckpt-6.index']


def _config(tmp_path, **changes):
    settings = dict(ckpt_path=str(tmp_path / 'ckpt'), log_path=str(tmp_path / 'logs'),
                    batch_size=8, num_iterations=6, log_per_iterations=3)
    settings.update(changes)
    return train.TrainConfig(**settings)


def test_skip_step_policy_leaves_the_weights_of_a_non_finite_step_alone():
    net = model.build(model.ModelConfig(num_layers=8))
    optimizer = train.Momentum(net.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    fn = train.make_train_step(net, optimizer, Schedule(), step, 1e-4, skip_non_finite=True)
    images = tf.random.stateless_normal([4, 32, 32, 3], seed=[3, 4])
    labels = tf.constant([0, 1, 2, 3])
    before = [v.numpy().copy() for v in net.trainable_variables]
    poisoned = tf.tensor_scatter_nd_update(images, [[0, 0, 0, 0]], [float('nan')])
    metrics = fn(poisoned, labels)
    assert float(metrics['skipped']) == 1.0 and int(step.numpy()) == 1
    for b, v in zip(before, net.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    assert float(fn(images, labels)['skipped']) == 0.0
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables))


def test_window_means_leave_out_skipped_steps_and_stop_on_a_bad_update():
    ok = dict(loss=2.0, accuracy=0.5, skipped=0.0)
    nan = dict(loss=float('nan'), accuracy=0.0, skipped=1.0)
    means = train._window_means([ok, nan, ok], current=3)
    assert means['loss'] == 2.0 and means['skipped_steps'] == 1
    with pytest.raises(UserError, match='the loss became nan at step 2'):
        train._window_means([ok, dict(nan, skipped=0.0), ok], current=3)


def test_a_disk_too_full_for_the_checkpoints_is_refused_before_training(tiny_data, tmp_path,
                                                                       monkeypatch):
    usage = train.shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(train.shutil, 'disk_usage',
                        lambda path: usage._replace(free=100_000))
    with pytest.raises(UserError, match=r'MB free, but 6 checkpoints of .* need'):
        train.train(model.ModelConfig(num_layers=8), _config(tmp_path), str(tiny_data),
                    out=lambda s: None)
    assert not os.listdir(tmp_path / 'ckpt')


def test_a_failed_save_names_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    real_save = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number > 3:
            raise OSError(28, 'No space left on device')
        return real_save(self, checkpoint_number=checkpoint_number, **kwargs)
    monkeypatch.setattr(tf.train.CheckpointManager, 'save', save)
    with pytest.raises(UserError, match=r'could not save the checkpoint of step 6 .*No space '
                                        r'left on device.*last good checkpoint is .*ckpt-3'):
        train.train(model.ModelConfig(num_layers=8), _config(tmp_path), str(tiny_data),
                    out=lambda s: None)
    assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')).endswith('ckpt-3')
