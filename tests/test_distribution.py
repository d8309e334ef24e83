"""tf.distribute: mirrored over two logical CPUs, multi_worker over two local processes.

Every process a test starts is bounded by a timeout and killed in `finally`; ports are
chosen free by binding to port 0. All but the unit tests (the batch split, what counts as
a lost peer) are slow.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from conftest import ROOT, error_lines, model_weights, run_script, write_cifar

from v2.nets import layers
from v2.runtime import distribution

# A weight decay large enough that doubling it (a per-replica decay summed twice) moves the
# weights a hundred times further than the float noise between two strategies.
TINY = ['--num_layers=8', '--batch_size=16', '--log_per_iterations=3', '--save_every=3',
        '--lr_values=0.05', '--lr_boundaries=', '--weight_decay=0.05', '--deterministic']


def same_weights(a, b, tolerance=1e-4):
    """Equal within float tolerance (relative, for the large early BN variances too)."""
    assert a.keys() == b.keys()
    return all(np.allclose(a[n], b[n], rtol=tolerance, atol=tolerance) for n in a)


def largest_difference(a, b):
    return max(float(np.max(np.abs(a[n] - b[n]) / (np.abs(b[n]) + 1e-3))) for n in a)


def digest(stdout):
    line = [line for line in stdout.splitlines() if 'weights digest' in line][-1]
    return line.split('weights digest ')[1].split()[0]


@pytest.fixture(scope='module')
def data_path(tmp_path_factory):
    return write_cifar(tmp_path_factory.mktemp('dist') / 'data')


def train(data_path, ckpt, steps, *extra):
    run = run_script('run_trainer.py', '--data_path=%s' % data_path, '--ckpt_path=%s' % ckpt,
                     '--num_iterations=%d' % steps, *TINY, *extra, timeout=240)
    assert run.returncode == 0, run.stderr
    return run


def test_worker_batches_cut_the_global_batch_in_replica_order():
    ids = tf.data.Dataset.range(3).map(
        lambda s: (tf.reshape(tf.cast(tf.range(16) + 100 * tf.cast(s, tf.int32), tf.float32),
                              [16, 1, 1, 1]), tf.range(16) + 100 * tf.cast(s, tf.int32)))
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1,
                                         num_replicas_in_sync=4)
    got = [labels.numpy().tolist() for _, labels in
           distribution.worker_batches(ids, 16, context)]
    # Worker 1 of 2 holds rows 8..15 of every global batch; its two replicas 4 rows each.
    assert got == [[8, 9, 10, 11], [12, 13, 14, 15], [108, 109, 110, 111], [112, 113, 114, 115],
                   [208, 209, 210, 211], [212, 213, 214, 215]]


@pytest.mark.parametrize('error, lost', [
    (tf.errors.UnavailableError(None, None, 'recvmsg:Connection reset by peer'), True),
    (tf.errors.DeadlineExceededError(None, None, 'Collective timed out'), True),
    (tf.errors.InternalError(None, None, 'Collective ops is aborted by: The following tasks '
                             'are unhealthy (stopped sending heartbeats)'), True),
    (tf.errors.CancelledError(None, None, 'Cancelled by the coordination service'), True),
    # this worker's own kernel failing: its device names a task, but no peer is lost
    (tf.errors.InternalError(None, None, 'Failed to launch the convolution on '
                             '/job:worker/replica:0/task:1/device:GPU:0'), False),
    (tf.errors.CancelledError(None, None, 'Function was cancelled before it was started'),
     False),
])
def test_a_lost_peer_is_told_from_a_failure_here(error, lost):
    assert distribution.is_peer_loss(error) is lost


def _batch_norm_step_on_two_replicas(strategy, synchronized, tmp_path):
    """One training-mode call of a BatchNorm (momentum 0.8, from mean 0 and variance 1) on
    each of two mirrored replicas (the logical CPUs of conftest), each with its own batch of
    2x3x3x4 (replica 1's scaled and shifted, so that the replicas' statistics differ).
    Returns (the two batches, the replicas' outputs, the statistics read in the cross-
    replica context, the statistics a checkpoint of it holds)."""
    rng = np.random.default_rng(3)
    x = [rng.normal(size=(2, 3, 3, 4)).astype(np.float32),
         (rng.normal(size=(2, 3, 3, 4)) * 3 + 2).astype(np.float32)]
    with strategy.scope():
        bn = layers.BatchNorm(4, 'bn', momentum=0.8, synchronized=synchronized)
    inputs = strategy.experimental_distribute_values_from_function(
        lambda context: tf.constant(x[context.replica_id_in_sync_group]))
    outputs = tf.function(lambda v: strategy.run(lambda t: bn(t, training=True), args=(v,)))(
        inputs)
    y = [t.numpy() for t in strategy.experimental_local_results(outputs)]
    read = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    reader = tf.train.load_checkpoint(tf.train.Checkpoint(bn=bn).write(str(tmp_path / 'bn')))
    saved = tuple(reader.get_tensor('bn/%s/.ATTRIBUTES/VARIABLE_VALUE' % name)
                  for name in ('moving_mean', 'moving_variance'))
    return x, y, read, saved


def test_per_replica_batch_norm_keeps_the_mean_of_the_replicas_statistics(two_replicas,
                                                                         tmp_path):
    """Without --sync_batch_norm each replica normalises with its own batch's statistics
    and moves its own averages: replica r's become 0.2 * mean(x_r) and 0.8 + 0.2 *
    var(x_r) (unbiased, n = 18 values a channel). Read for evaluation or a checkpoint,
    the statistics are the MEAN over the replicas of those (TensorFlow's ON_READ variables
    with aggregation MEAN), not the first replica's."""
    x, y, read, saved = _batch_norm_step_on_two_replicas(two_replicas.strategy, False,
                                                        tmp_path)
    for batch, out in zip(x, y):
        np.testing.assert_allclose(out, ref.batch_norm_training(batch, 1.0, 0.0),
                                   rtol=1e-3, atol=1e-4)
    mean = np.mean([0.2 * b.mean(axis=(0, 1, 2)) for b in x], axis=0)
    variance = np.mean([0.8 + 0.2 * b.var(axis=(0, 1, 2), ddof=1) for b in x], axis=0)
    first = 0.2 * x[0].mean(axis=(0, 1, 2))
    assert np.abs(mean - first).min() > 0.1                  # the first replica's differ
    for got in (read, saved):
        np.testing.assert_allclose(got[0], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], variance, rtol=1e-5)


def test_synchronized_batch_norm_takes_the_statistics_of_the_global_batch(two_replicas,
                                                                         tmp_path):
    """With --sync_batch_norm both replicas normalise with the mean and the biased
    variance of the global batch (both replicas' 2 x 18 values a channel) and move their
    averages by them, the variance unbiased with the global count n = 36 (36/35, where
    a replica's own count would give 18/17)."""
    x, y, read, saved = _batch_norm_step_on_two_replicas(two_replicas.strategy, True, tmp_path)
    both = np.concatenate(x)
    np.testing.assert_allclose(np.concatenate(y), ref.batch_norm_training(both, 1.0, 0.0),
                               rtol=1e-3, atol=1e-4)
    for got in (read, saved):
        np.testing.assert_allclose(got[0], 0.2 * both.mean(axis=(0, 1, 2)), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(got[1], 0.8 + 0.2 * both.var(axis=(0, 1, 2), ddof=1),
                                   rtol=1e-5)


@pytest.mark.slow
def test_mirrored_over_two_cpus_trains_the_weights_one_device_does(data_path, tmp_path):
    single = train(data_path, tmp_path / 'single', 6)
    assert 'one device' in single.stdout
    mirrored = train(data_path, tmp_path / 'mirrored', 6, '--distribution_strategy=mirrored',
                     '--cpu_devices=2', '--sync_batch_norm')
    assert 'mirrored over 2 replicas' in mirrored.stdout
    reference = model_weights(tmp_path / 'single' / 'ckpt-6')
    assert same_weights(reference, model_weights(tmp_path / 'mirrored' / 'ckpt-6'))
    # The tolerance catches a wrong split of the loss: twice the decay is far outside it.
    doubled = train(data_path, tmp_path / 'doubled', 6, '--weight_decay=0.1')
    assert doubled.returncode == 0
    assert largest_difference(model_weights(tmp_path / 'doubled' / 'ckpt-6'), reference) > 1e-2
    # Resumed under another strategy from a one-device checkpoint: the same weights again.
    train(data_path, tmp_path / 'switched', 3)
    resumed = train(data_path, tmp_path / 'switched', 6, '--distribution_strategy=mirrored',
                    '--cpu_devices=2', '--sync_batch_norm')
    assert 'resuming at step 3' in resumed.stdout
    assert same_weights(reference, model_weights(tmp_path / 'switched' / 'ckpt-6'))
    # Per-replica statistics (the default, as in the papers) normalise each half batch
    # on its own: a different computation, so measurably different weights.
    per_replica = train(data_path, tmp_path / 'per_replica', 6,
                        '--distribution_strategy=mirrored', '--cpu_devices=2')
    assert not same_weights(reference, model_weights(tmp_path / 'per_replica' / 'ckpt-6'),
                            tolerance=1e-3)
    assert 'weights digest' in per_replica.stdout       # the replicas' copies agreed


@pytest.mark.slow
def test_xla_compiles_each_replica_under_mirrored(data_path, tmp_path):
    plain = train(data_path, tmp_path / 'plain', 3, '--distribution_strategy=mirrored',
                  '--cpu_devices=2')
    compiled = train(data_path, tmp_path / 'xla', 3, '--distribution_strategy=mirrored',
                     '--cpu_devices=2', '--jit_compile')
    assert 'weights digest' in compiled.stdout and plain.returncode == 0
    assert same_weights(model_weights(tmp_path / 'plain' / 'ckpt-3'),
                        model_weights(tmp_path / 'xla' / 'ckpt-3'), tolerance=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize('extra, message', [
    (['--distribution_strategy=mirrored', '--cpu_devices=2', '--batch_size=15'],
     '--batch_size=15 does not divide by the 2 replicas of mirrored over 2 replicas'),
    (['--distribution_strategy=mirrored', '--devices=/gpu:7'],
     '--devices=/gpu:7: no device /gpu:7 here'),
    (['--devices=/cpu:0,/cpu:1'], '--devices=/cpu:0,/cpu:1: one device without '
                                  '--distribution_strategy=mirrored'),
    (['--cpu_devices=2'], '--devices and --cpu_devices need --distribution_strategy=mirrored'),
    (['--distribution_strategy=mirrored', '--cpu_devices=2', '--sync_batch_norm',
      '--jit_compile'], '--jit_compile with --sync_batch_norm over 2 replicas'),
    (['--distribution_strategy=multi_worker'], '--distribution_strategy=multi_worker needs '
                                               'TF_CONFIG'),
])
def test_bad_distribution_flags_get_one_line(data_path, tmp_path, extra, message):
    run = run_script('run_trainer.py', '--data_path=%s' % data_path,
                     '--ckpt_path=%s' % (tmp_path / 'ckpt'), '--num_iterations=2', *TINY, *extra)
    assert run.returncode == 1
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert not (tmp_path / 'ckpt').exists()


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(('127.0.0.1', 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Cluster:
    """Worker processes of run_trainer.py on 127.0.0.1, each with its own TF_CONFIG."""

    def __init__(self, tmp_path, count=2):
        self.tmp_path = tmp_path
        self.addresses = ['127.0.0.1:%d' % p for p in free_ports(count)]
        self.processes, self.logs = [], []

    def start(self, *args, each=None):
        """Starts every worker with args, and worker i also with each[i] when given."""
        for index in range(len(self.addresses)):
            env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
            env['TF_CONFIG'] = json.dumps({'cluster': {'worker': self.addresses},
                                           'task': {'type': 'worker', 'index': index}})
            env['TMPDIR'] = str(self.tmp_path / ('tmp%d' % index))
            os.makedirs(env['TMPDIR'], exist_ok=True)
            log = open(self.tmp_path / ('worker%d-%d.log' % (index, len(self.logs))), 'w+')
            self.logs.append(log)
            self.processes.append(subprocess.Popen(
                [sys.executable, str(ROOT / 'run_trainer.py'), *args, *(each or {}).get(index, ()),
                 '--distribution_strategy=multi_worker'],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True))
        return self.processes[-len(self.addresses):]

    def output(self, process):
        log = self.logs[self.processes.index(process)]
        log.flush()
        log.seek(0)
        return log.read()

    def wait(self, processes, timeout):
        deadline = time.monotonic() + timeout
        for p in processes:
            p.wait(timeout=max(1, deadline - time.monotonic()))
        return [p.returncode for p in processes]

    def close(self):
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


@pytest.mark.slow
def test_multi_worker_trains_in_sync_and_the_chief_alone_writes(data_path, tmp_path):
    ckpt = tmp_path / 'ckpt'
    cluster = Cluster(tmp_path)
    try:
        workers = cluster.start('--data_path=%s' % data_path, '--ckpt_path=%s' % ckpt,
                                '--num_iterations=6', *TINY, '--sync_batch_norm')
        assert cluster.wait(workers, timeout=240) == [0, 0], [cluster.output(w) for w in workers]
        chief, other = (cluster.output(w) for w in workers)
    finally:
        cluster.close()
    assert 'multi_worker: worker 0 of 2 (chief), 2 replicas in all' in chief
    assert digest(chief) == digest(other)                       # identical weights
    assert sorted(os.listdir(ckpt)) == ['checkpoint', 'ckpt-3.data-00000-of-00001',
                                        'ckpt-3.index', 'ckpt-6.data-00000-of-00001',
                                        'ckpt-6.index', 'logs']
    logs = sorted(os.listdir(ckpt / 'logs'))           # the chief's: its scalars, its CSV
    assert logs[1:] == ['metrics.csv', 'train'] and logs[0].startswith('events.out')  # + HParams
    assert len((ckpt / 'logs' / 'metrics.csv').read_text().splitlines()) == 1 + 2   # 2 windows
    assert os.listdir(tmp_path / 'tmp1') == []          # worker 1's copies were removed
    # Two workers with one replica each and pooled statistics: one device's weights.
    train(data_path, tmp_path / 'single', 6)
    assert same_weights(model_weights(tmp_path / 'single' / 'ckpt-6'),
                        model_weights(ckpt / 'ckpt-6'))
    evaluated = run_script('run_evaluator.py', '--ckpt_path=%s' % ckpt,
                           '--data_path=%s' % data_path)
    assert evaluated.returncode == 0 and 'accuracy' in evaluated.stdout, evaluated.stderr
    # The same global batch on one worker now: it resumes from the chief's checkpoint.
    resumed = train(data_path, ckpt, 9, '--sync_batch_norm')
    assert 'resuming at step 6' in resumed.stdout


@pytest.mark.slow
def test_workers_that_restored_different_steps_all_refuse(data_path, tmp_path):
    # Folders at steps 6 and 3 and an empty one: worker 1's step is the workers' mean,
    # which a check on the sum of the steps lets through. Batch 18: three replicas.
    train(data_path, tmp_path / 'a', 3, '--batch_size=18')
    shutil.copytree(tmp_path / 'a', tmp_path / 'b')
    train(data_path, tmp_path / 'a', 6, '--batch_size=18')
    cluster = Cluster(tmp_path, count=3)
    try:
        workers = cluster.start('--data_path=%s' % data_path, *TINY, '--batch_size=18',
                                '--num_iterations=9', '--worker_timeout=10',
                                each={i: ['--ckpt_path=%s' % (tmp_path / d)]
                                      for i, d in enumerate('abc')})
        codes = cluster.wait(workers, timeout=240)
        outputs = [cluster.output(w) for w in workers]
    finally:
        cluster.close()
    assert codes == [1, 1, 1], outputs
    for index, step in enumerate((6, 3, 0)):
        lines = error_lines(outputs[index])
        assert len(lines) == 1, outputs[index]
        assert ('worker %d restored step %d, but the workers restored steps 0, 3, 6; --ckpt_path='
                % (index, step)) in lines[0]
    assert tf.train.latest_checkpoint(str(tmp_path / 'a')).endswith('ckpt-6')
    assert tf.train.latest_checkpoint(str(tmp_path / 'b')).endswith('ckpt-3')
    assert tf.train.latest_checkpoint(str(tmp_path / 'c')) is None


@pytest.mark.slow
def test_a_killed_worker_stops_the_other_and_a_restart_resumes(data_path, tmp_path):
    ckpt = tmp_path / 'ckpt'
    args = ['--data_path=%s' % data_path, '--ckpt_path=%s' % ckpt, *TINY, '--worker_timeout=10']
    cluster = Cluster(tmp_path)
    try:
        chief, other = cluster.start(*args, '--num_iterations=100000')
        deadline = time.monotonic() + 180
        while 'step 6/' not in cluster.output(chief):
            assert time.monotonic() < deadline and chief.poll() is None, cluster.output(chief)
            time.sleep(0.5)
        other.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        assert cluster.wait([chief], timeout=60) == [1]
        assert time.monotonic() - killed_at < 60
        lines = error_lines(cluster.output(chief))
        assert len(lines) == 1 and 'worker 0: lost contact with the other workers' in lines[0]
        last = tf.train.latest_checkpoint(str(ckpt))
        assert last and 'start every worker again with the same command' in lines[0]
        step = int(last.rsplit('-', 1)[1])
        # Restarting the cluster resumes from the last checkpoint.
        restarted = cluster.start(*args, '--num_iterations=%d' % (step + 3))
        assert cluster.wait(restarted, timeout=240) == [0, 0], cluster.output(restarted[0])
        assert all('resuming at step %d' % step in cluster.output(w) for w in restarted)
    finally:
        cluster.close()


@pytest.mark.slow
def test_a_stop_request_to_one_worker_stops_every_worker_at_one_checkpoint(data_path, tmp_path):
    ckpt = tmp_path / 'ckpt'
    cluster = Cluster(tmp_path)
    try:
        chief, other = cluster.start('--data_path=%s' % data_path, '--ckpt_path=%s' % ckpt,
                                     *TINY, '--num_iterations=100000', '--worker_timeout=10')
        deadline = time.monotonic() + 180
        while 'step 6/' not in cluster.output(chief):
            assert time.monotonic() < deadline and chief.poll() is None, cluster.output(chief)
            time.sleep(0.5)
        other.send_signal(signal.SIGTERM)
        assert cluster.wait([chief, other], timeout=90) == [128 + signal.SIGTERM] * 2
        stops = [[line for line in cluster.output(w).splitlines() if 'stopped at step' in line]
                 for w in (chief, other)]
    finally:
        cluster.close()
    step = int(tf.train.latest_checkpoint(str(ckpt)).rsplit('-', 1)[1])
    assert stops == [['stopped at step %d; checkpoint %s; run the same command to resume'
                      % (step, ckpt / ('ckpt-%d' % step))],
                     ['worker 1: stopped at step %d; checkpoint %s; run the same command to '
                      'resume' % (step, ckpt / ('ckpt-%d' % step))]]
