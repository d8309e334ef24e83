"""How training spreads over devices and machines: TensorFlow's tf.distribute strategies.

  default       one device (tf.distribute's default strategy: no copies, no reduction).
  mirrored      synchronous data parallelism on one machine: every GPU, or --devices, or
                the CPU split into --cpu_devices logical devices (to try it without GPUs).
  multi_worker  the same across machines: MultiWorkerMirroredStrategy, the cluster read
                from TF_CONFIG as TensorFlow documents it; worker 0 is the chief.

One training loop serves all three (v2.training.loop.train): the step runs under strategy.run,
gradients are summed over replicas, and every replica applies the same update to its
own copy of the weights. What stays per replica is batch norm's statistics, as in the
papers (He et al. 2015 trained CIFAR on two GPUs with 64 images each); --sync_batch_norm
pools them over the global batch instead.
"""

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from v2.errors import UserError
from v2.runtime import devices as devices_lib
from v2.runtime import lock

STRATEGIES = ('default', 'mirrored', 'multi_worker')

# Errors a collective raises when a peer is gone: its connection refused or reset
# (Unavailable), the collective's timeout (DeadlineExceeded), or the coordination
# service's verdict that a task stopped sending heartbeats (Aborted, Cancelled, Internal).
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
               tf.errors.AbortedError, tf.errors.CancelledError, tf.errors.InternalError)


def local_assign(variable, value):
    """Writes this replica's copy of a variable that every replica updates identically.

    Under a strategy, a mirrored variable assigned in a replica would synchronise
    the replicas (a merge call), which XLA cannot compile; every replica computes the
    same value in the training step, so each writing its own copy keeps them equal.
    """
    tf.raw_ops.AssignVariableOp(resource=variable.handle, value=tf.cast(value, variable.dtype))


def local_add(variable, value):
    """local_assign's addition."""
    tf.raw_ops.AssignAddVariableOp(resource=variable.handle, value=tf.cast(value, variable.dtype))


def is_peer_loss(error):
    """Whether an error of PEER_ERRORS is a lost or unreachable worker, not a failure here.

    Internal and Cancelled errors also come from this process's own kernels; they mean
    a lost peer only when the coordination service or a collective says so. Every
    error of a worker names its device (/job:worker/replica:0/task:0/...), so 'task'
    alone says nothing.
    """
    if isinstance(error, (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
                          tf.errors.AbortedError)):
        return True
    text = str(error).lower()
    return any(word in text for word in ('heartbeat', 'coordination', 'unhealthy', 'collective',
                                         'connection', 'peer'))


def check_same_step(cluster, step, ckpt_path):
    """Refuses a multi_worker run whose workers restored different steps.

    A worker that cannot read ckpt_path (no shared filesystem) would start from step
    0 while the chief resumes, and their weights would part without a word. Every
    worker gathers every replica's step, so all of them see the same list and all
    refuse together (a sum would let a worker whose step is the mean go on alone).
    """
    local = int(step.numpy())

    def replica_step():
        value = tf.reshape(tf.cast(step, tf.float64), [1])     # float64: exact past 2**24
        return tf.distribute.get_replica_context().all_gather(value, axis=0)

    gathered = cluster.strategy.experimental_local_results(
        tf.function(lambda: cluster.strategy.run(replica_step))())[0]
    steps = sorted({int(s) for s in gathered.numpy()})
    if steps != [local]:
        raise UserError('worker %d restored step %d, but the workers restored steps %s; '
                        'ckpt_path=%s must be one folder every worker reads'
                        % (cluster.worker_index, local, ', '.join(map(str, steps)), ckpt_path),
                        settings=('ckpt_path',))


def reason(error):
    """The useful part of a collective's error: 'recvmsg:Connection reset by peer', ..."""
    lines = str(error).strip().splitlines() + ['']
    line = re.sub(r'\{\{[^}]*\}\}\s*', '', lines[0])
    if line.endswith(':'):                 # "tasks are unhealthy ...:" names them next
        line += ' ' + lines[1].strip()
    return line.rsplit('aborted by: ', 1)[-1][:240]


def weights_digest(cluster, variables):
    """A SHA-256 of this worker's copy of `variables`; an error if its replicas disagree.

    Workers (and replicas) of a synchronous run must hold the same weights after
    every step; comparing the digest the workers print checks it.
    """
    digest = hashlib.sha256()
    for v in variables:
        copies = [c.numpy() for c in cluster.strategy.experimental_local_results(v)]
        if any(not np.array_equal(copies[0], c) for c in copies[1:]):
            raise RuntimeError('the replicas of this worker hold different values of %s' % v.name)
        digest.update(copies[0].tobytes())
    return digest.hexdigest()[:16]


@dataclasses.dataclass
class Cluster:
    """The strategy and this process's place in it."""
    strategy: tf.distribute.Strategy
    name: str
    num_workers: int = 1
    worker_index: int = 0

    @property
    def replicas(self):
        return self.strategy.num_replicas_in_sync

    @property
    def is_chief(self):
        return self.worker_index == 0

    @property
    def distributed(self):
        return self.name != 'default'

    @property
    def multi_worker(self):
        return self.name == 'multi_worker'

    def describe(self, used=()):
        """'one device: <device>', 'mirrored over 2 replicas (...)', 'multi_worker: ...'."""
        if self.name == 'default':
            return 'one device: %s' % (used[0] if used else 'the default device')
        names = ', '.join(sorted({str(d) for d in used}))
        if self.name == 'mirrored':
            return 'mirrored over %d replicas (%s%s)' % (
                self.replicas, ', '.join(self.strategy.extended.worker_devices),
                '; ' + names if devices_lib.on_gpu(used) else '')
        return 'multi_worker: worker %d of %d%s, %d replicas in all%s' % (
            self.worker_index, self.num_workers, ' (chief)' if self.is_chief else '',
            self.replicas, ' (%s)' % names if names else '')


def split_cpu(count):
    """Splits the host CPU into `count` logical devices (before TensorFlow starts its runtime)."""
    cpu = tf.config.list_physical_devices('CPU')[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        if len(tf.config.list_logical_devices('CPU')) != count:
            raise UserError('cpu_devices=%d: TensorFlow\'s devices were already set up in this '
                            'process; set it before anything else runs' % count,
                            settings=('cpu_devices',)) from None


def read_tf_config():
    """(number of workers, this worker's index) from TF_CONFIG; UserError if it is unusable."""
    text = os.environ.get('TF_CONFIG')
    if not text:
        raise UserError('distribution_strategy=multi_worker needs TF_CONFIG, e.g. '
                        '{"cluster": {"worker": ["host1:port", "host2:port"]}, '
                        '"task": {"type": "worker", "index": 0}} (see docs/distributed.md)',
                        settings=('distribution_strategy',))
    try:
        config = json.loads(text)
        workers = config['cluster']['worker']
        task_type, index = config['task']['type'], int(config['task']['index'])
    except (ValueError, KeyError, TypeError):
        raise UserError('TF_CONFIG is not {"cluster": {"worker": [...]}, "task": {"type": '
                        '"worker", "index": N}}: %s' % text) from None
    if set(config['cluster']) != {'worker'} or task_type != 'worker':
        raise UserError('TF_CONFIG: give only "worker" tasks (worker 0 is the chief); got %s'
                        % text)
    if not 0 <= index < len(workers):
        raise UserError('TF_CONFIG: task index %d is not one of the %d workers'
                        % (index, len(workers)))
    return len(workers), index


def make_cluster(name, *, devices=(), cpu_devices=0, worker_timeout=0, gpus=False):
    """The Cluster for distribution_strategy; call it before any other TensorFlow work.

    With GPUs, replicas all-reduce through NCCL. worker_timeout (seconds; 0: none)
    bounds a multi_worker collective: TensorFlow documents it as a debugging aid
    that starts a thread per collective, so it is set only when asked for.
    """
    if name not in STRATEGIES:
        raise UserError('distribution_strategy=%s: expected one of %s'
                        % (name, '|'.join(STRATEGIES)), settings=('distribution_strategy',))
    if name != 'mirrored' and (len(devices) > 1 or cpu_devices > 1):
        raise UserError('devices and cpu_devices need distribution_strategy=mirrored',
                        settings=('devices', 'cpu_devices', 'distribution_strategy'))
    devices = [devices_lib.canonical(d) for d in devices]
    if cpu_devices > 1:
        split_cpu(cpu_devices)
    if name == 'default':
        return Cluster(tf.distribute.get_strategy(), name)
    if name == 'mirrored':
        if gpus:
            devices = ()                # every visible GPU: devices.setup() kept the run's own
        if not devices and cpu_devices > 1:
            devices = [d.name for d in tf.config.list_logical_devices('CPU')]
        known = {devices_lib.canonical(d.name) for kind in ('CPU', 'GPU')
                 for d in tf.config.list_logical_devices(kind)}
        unknown = [d for d in devices if devices_lib.canonical(d) not in known]
        if unknown:
            raise UserError('devices=%s: no device %s here; this machine has %s'
                            % (','.join(devices), unknown[0], ', '.join(sorted(known))),
                            settings=('devices',))
        all_reduce = tf.distribute.NcclAllReduce() if gpus else None
        return Cluster(tf.distribute.MirroredStrategy(list(devices) or None,
                                                      cross_device_ops=all_reduce), name)
    num_workers, index = read_tf_config()
    options = tf.distribute.experimental.CommunicationOptions(
        implementation=(tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                        else tf.distribute.experimental.CommunicationImplementation.AUTO),
        timeout_seconds=worker_timeout or None)
    strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return Cluster(strategy, name, num_workers, index)


def check_batch(batch_size, cluster):
    """The global batch must split evenly over the replicas."""
    if batch_size % cluster.replicas:
        raise UserError('batch_size=%d does not divide by the %d replicas of %s; use a '
                        'multiple of %d' % (batch_size, cluster.replicas, cluster.describe(),
                                            cluster.replicas), settings=('batch_size',))


def distribute_batches(cluster, make_batches, global_batch, on_gpu=False):
    """The global batches of make_batches() cut into per-replica batches, deterministically.

    Every worker builds the same sequence of global batches (they are a function of
    seed and step) and keeps its own contiguous share; its replicas take consecutive
    slices of that share. Replica r of worker w therefore sees the same images at
    every step however many workers there are, and all replicas together see
    exactly the batch a single device would: runs can resume on another cluster size.
    On one GPU (`on_gpu`, the only one the run sees) the batches are prefetched onto it.
    """
    if not cluster.distributed:
        batches = make_batches()
        if on_gpu:
            batches = batches.apply(tf.data.experimental.prefetch_to_device('/gpu:0'))
        return batches
    return cluster.strategy.distribute_datasets_from_function(
        lambda context: worker_batches(make_batches(), global_batch, context))


def worker_batches(batches, global_batch, context):
    """One worker's per-replica batches (in replica order) from the global `batches`."""
    workers = context.num_input_pipelines
    local_replicas = context.num_replicas_in_sync // workers
    share = global_batch // workers
    first = context.input_pipeline_id * share
    per_replica = share // local_replicas

    def shard(images, labels):
        images, labels = images[first:first + share], labels[first:first + share]
        return (tf.reshape(images, [local_replicas, per_replica] + images.shape[1:].as_list()),
                tf.reshape(labels, [local_replicas, per_replica]))

    return batches.map(shard).unbatch()


class WorkerFolders:
    """Where this worker writes checkpoints and summaries.

    The chief writes into --ckpt_path and --log_path. Every other worker must take
    part in each save (saving reads variables through collectives), so it saves into
    a temporary folder of its own that is emptied right after (but for the lock it
    holds there, v2.runtime.lock) and removed at the end, and writes no summaries.
    """

    def __init__(self, cluster):
        self.cluster = cluster
        self.scratch = None if cluster.is_chief else tempfile.mkdtemp(
            prefix='cifar-resnet-worker%d-' % cluster.worker_index)

    def summary_writer(self, log_path, run):
        if self.cluster.is_chief:
            return tf.summary.create_file_writer(os.path.join(log_path, run))
        return tf.summary.create_noop_writer()

    def save(self, manager, checkpoint, step):
        """manager.save on the chief; a throw-away copy elsewhere. Returns the chief's path."""
        if self.cluster.is_chief:
            return manager.save(checkpoint_number=step)
        checkpoint.write(os.path.join(self.scratch, 'ckpt-%d' % step))
        for name in os.listdir(self.scratch):
            if name == lock.FILE:
                continue
            path = os.path.join(self.scratch, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        return os.path.join(manager.directory, 'ckpt-%d' % step)

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
