"""The training loop: one traced step, checkpoints, TensorBoard summaries, progress.

Recipe of He et al. 2015, section 4.2 (the defaults of the flags): SGD with
momentum 0.9, weight decay 1e-4, batch 128, learning rate 0.1 divided by 10 at 32k
and 48k iterations, 64k iterations in all. `num_iterations` is the TOTAL: a run
restarted with the same --ckpt_path continues from the saved step to that total.
"""

import dataclasses
import json
import os
import shutil
import signal
import tempfile
import time
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from v2 import checkpoint, data, distribution, precision as precision_lib
from v2.errors import UserError
from v2.evaluate import Evaluator
from v2.model import build, count_parameters, decayed_weights
from v2.optimizer import Momentum
from v2.schedule import Schedule


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every training setting that is not the architecture (those are in ModelConfig)."""
    ckpt_path: str
    log_path: str
    batch_size: int = 128
    num_iterations: int = 64000
    log_per_iterations: int = 100
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    schedule: Schedule = Schedule()
    max_to_keep: int = 5
    eval_every: int = 0
    eval_batch_size: int = 500
    seed: int = 0
    precision: str = 'float32'
    jit_compile: bool = False
    deterministic: bool = False
    nan_policy: str = 'stop'
    sync_batch_norm: bool = False
    bn_momentum: float = 0.9
    zero_init_residual: bool = False
    distribution_strategy: str = 'default'
    devices: tuple = ()
    cpu_devices: int = 0
    worker_timeout: int = 60

    def recipe_json(self):
        """The settings that shape the result (not where files go), as stored in checkpoints."""
        recipe = dataclasses.asdict(self)
        for where in ('ckpt_path', 'log_path', 'log_per_iterations', 'max_to_keep',
                      'eval_every', 'eval_batch_size', 'jit_compile', 'distribution_strategy',
                      'devices', 'cpu_devices', 'worker_timeout'):
            recipe.pop(where)
        return json.dumps(recipe, sort_keys=True)


@dataclasses.dataclass
class TrainResult:
    step: int
    checkpoint: str            # the last checkpoint written or restored
    stopped_by: int = 0        # the signal that stopped training early, if any
    last_metrics: dict = None  # the means of the last logging window


def prepare_folder(path, flag):
    """Creates `path` if needed and checks that files can be written there."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError('--%s=%s is a file; it must be a folder' % (flag, path))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError('--%s=%s: cannot write there (%s)' % (flag, path, e.strerror or e)) from None


class StopRequests:
    """Turns the first SIGINT/SIGTERM into a request to checkpoint and stop.

    A second signal stops at once (KeyboardInterrupt), for a user who cannot wait.
    """

    def __init__(self, out):
        self.out = out
        self.signum = 0
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum:
            raise KeyboardInterrupt
        self.signum = signum
        self.out('%s received: saving a checkpoint after this step (send it again to stop '
                 'at once)' % signal.Signals(signum).name)

    def __enter__(self):
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def make_train_step(model, optimizer, schedule, step, weight_decay, loss_scale=None,
                    jit_compile=False, skip_non_finite=False, strategy=None, global_batch=None):
    """The traced training step: forward, loss, gradients, update, step += 1.

    The loss is the mean cross-entropy plus weight_decay * sum(||w||^2) / 2 over the
    conv and linear kernels (L2 weight decay; BN scale/offset and the bias are not
    decayed). With a loss_scale (float16), the gradients come from the scaled loss
    and the scale adapts. With a loss_scale or skip_non_finite, a step whose loss or
    gradients are not finite changes no weight (metric 'skipped' is 1).

    The step runs under strategy.run (tf.distribute's default strategy: one device).
    Each replica's cross-entropy is averaged over the GLOBAL batch and its weight
    decay divided by the number of replicas, so that the gradients summed over the
    replicas are those of the whole batch; every replica then applies that same
    update to its own copy of the weights. Returns the step's metrics as scalars.
    """
    strategy = strategy or tf.distribute.get_strategy()
    replicas = strategy.num_replicas_in_sync
    variables = model.trainable_variables
    decayed = decayed_weights(model)
    guarded = skip_non_finite or loss_scale is not None
    sum_ = tf.distribute.ReduceOp.SUM

    def replica_step(images, labels):
        batch = global_batch or tf.shape(labels)[0]
        learning_rate = schedule(step)
        with tf.GradientTape() as tape:
            logits = model(images, training=True)
            cross_entropy = tf.nn.compute_average_loss(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits),
                global_batch_size=batch)
            l2 = weight_decay * tf.add_n([tf.nn.l2_loss(w) for w in decayed]) / replicas
            loss = cross_entropy + l2
            scaled = loss * loss_scale.scale if loss_scale else loss
        grads = tape.gradient(scaled, variables)
        context = tf.distribute.get_replica_context()
        if replicas > 1:
            grads = context.all_reduce(sum_, grads)
        if loss_scale:
            grads = [g / loss_scale.scale for g in grads]
        shared = {'learning_rate': learning_rate}
        if guarded:
            whole_loss = context.all_reduce(sum_, loss) if replicas > 1 else loss
            finite = tf.logical_and(
                tf.math.is_finite(whole_loss),
                tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in grads]))
            if finite:                     # autograph: a tf.cond that skips the update
                optimizer.apply(grads, variables, learning_rate)
            shared['skipped'] = 1.0 - tf.cast(finite, tf.float32)
            if loss_scale:
                loss_scale.update(finite)
                shared['loss_scale'] = loss_scale.scale.read_value()
        else:
            optimizer.apply(grads, variables, learning_rate)
        step.assign_add(1)
        correct = tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels)
        # Shares of the global batch's means: their sum over the replicas is the mean.
        shares = dict(loss=loss, cross_entropy=cross_entropy, l2_loss=l2,
                      accuracy=tf.nn.compute_average_loss(tf.cast(correct, tf.float32),
                                                          global_batch_size=batch))
        return shares, shared

    @tf.function(jit_compile=jit_compile)
    def train_step(images, labels):
        shares, shared = strategy.run(replica_step, args=(images, labels))
        metrics = {k: strategy.reduce(sum_, v, axis=None) for k, v in shares.items()}
        metrics.update({k: strategy.reduce(tf.distribute.ReduceOp.MEAN, v, axis=None)
                        for k, v in shared.items()})
        return metrics

    return train_step


def format_duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return '%dh%02dm' % (seconds // 3600, seconds % 3600 // 60)
    return '%dm%02ds' % (seconds // 60, seconds % 60)


def load_training_data(model_config, config, data_path):
    """The checked training set, which must hold at least one batch."""
    images, labels = data.load_split(data_path, data.DATASETS[model_config.dataset], 'train')
    if config.batch_size > images.shape[0]:
        raise UserError('--batch_size=%d is larger than the %d training images in %s'
                        % (config.batch_size, images.shape[0], data_path))
    return images, labels


def check_free_space(path, ckpt_bytes, keep):
    """Refuses to start when the folder cannot hold the checkpoints it will keep."""
    free = shutil.disk_usage(path).free
    needed = ckpt_bytes * (keep + 1)             # the kept ones and the one being written
    if free < needed:
        raise UserError('--ckpt_path=%s: %.1f MB free, but %d checkpoints of %.1f MB need '
                        '%.1f MB; free some space or lower --max_to_keep'
                        % (path, free / 1e6, keep + 1, ckpt_bytes / 1e6, needed / 1e6))


def dry_run(model_config, config, data_path, out=print):
    """Checks the data and builds the input pipeline without training; prints what it found."""
    images, labels = load_training_data(model_config, config, data_path)
    batches = data.train_batches(images, labels, data.pixel_mean(images), config.batch_size,
                                 config.seed, 0, config.num_iterations)
    batch_images, _ = next(iter(batches))
    out('input pipeline: %d training images in %s, %d steps per epoch, batches of %s; '
        'dry run: nothing trained or written'
        % (images.shape[0], data_path, images.shape[0] // config.batch_size,
           'x'.join(str(d) for d in batch_images.shape)))


def train(model_config, config, data_path, out=print, on_step=None, on_record=None):
    """Trains (or resumes training) to config.num_iterations; returns a TrainResult.

    Everything that can be checked is checked before the first step: the data
    files, the folders, and that a checkpoint already in ckpt_path has this
    architecture. on_step(step), if given, is called after every step (the
    benchmark times the real loop with it). on_record(step, split, metrics), if
    given, receives every logged window's means (split 'train') and every test
    evaluation (split 'test'), always before the checkpoint of that step is
    written, so a caller's record never lags the checkpoints it resumes from.

    config.distribution_strategy picks the tf.distribute strategy (v2.distribution);
    it is set up first, as TensorFlow requires. Under multi_worker every worker runs
    this function; only the chief (worker 0) writes into ckpt_path and log_path.
    """
    cluster = distribution.make_cluster(config.distribution_strategy, config.devices,
                                        config.cpu_devices, config.worker_timeout)
    if not cluster.is_chief:
        out = (lambda line, say=out: say('worker %d: %s' % (cluster.worker_index, line)))
    distribution.check_batch(config.batch_size, cluster)
    images, labels = load_training_data(model_config, config, data_path)
    test = (data.load_split(data_path, data.DATASETS[model_config.dataset], 'test')
            if config.eval_every else None)
    if cluster.is_chief:
        prepare_folder(config.ckpt_path, 'ckpt_path')
        prepare_folder(config.log_path, 'log_path')
    latest = tf.train.latest_checkpoint(config.ckpt_path)
    saved = checkpoint.Saved(latest) if latest else None
    if saved:
        model_config = _keep_strided_padding(saved, model_config, out)
        saved.check_matches(dataclasses.asdict(model_config))

    dtype = precision_lib.compute_dtype(config.precision, warn=out)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    with cluster.strategy.scope():
        model = build(model_config, seed=config.seed, compute_dtype=dtype,
                      bn_momentum=config.bn_momentum, sync_batch_norm=config.sync_batch_norm,
                      zero_init_residual=config.zero_init_residual)
        optimizer = Momentum(model.trainable_variables, config.momentum, config.nesterov)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name='step',
                           aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        loss_scale = precision_lib.DynamicLossScale() if dtype == tf.float16 else None
    mean = tf.Variable(data.pixel_mean(images), trainable=False)
    ckpt = checkpoint.make(model, mean, step, optimizer, config.recipe_json(), loss_scale)
    if cluster.is_chief:
        check_free_space(config.ckpt_path,
                         sum(v.shape.num_elements() * v.dtype.size
                             for v in model.variables + optimizer.variables),
                         config.max_to_keep)
        for partial in checkpoint.remove_partial_saves(config.ckpt_path):
            out('removed %s, left by a save that was cut off' % partial)
    manager = tf.train.CheckpointManager(ckpt, config.ckpt_path, max_to_keep=config.max_to_keep)
    if saved:
        checkpoint.restore(ckpt, latest)
        changes = _recipe_changes(saved.training_json, config.recipe_json())
        if saved.training_json and changes:
            out('note: resuming with training flags that differ from the checkpoint\'s: %s'
                % changes)
    start = int(step.numpy())
    out('%s: %s trainable parameters; %d training images, batch %d, %s, %s; %s'
        % (model_config.describe(), format(count_parameters(model), ','), images.shape[0],
           config.batch_size, dtype.name, cluster.describe(),
           'resuming at step %d from %s' % (start, latest) if saved else 'starting at step 0'))
    if start >= config.num_iterations:
        out('step %d already reaches --num_iterations=%d: nothing to train'
            % (start, config.num_iterations))
        return TrainResult(step=start, checkpoint=latest)

    train_step = make_train_step(model, optimizer, config.schedule, step, config.weight_decay,
                                 loss_scale, config.jit_compile,
                                 skip_non_finite=config.nan_policy == 'skip_step',
                                 strategy=cluster.strategy, global_batch=config.batch_size)
    batches = distribution.distribute_batches(
        cluster, lambda: data.train_batches(images, labels, mean.numpy(), config.batch_size,
                                            config.seed, start, config.num_iterations),
        config.batch_size)
    evaluate = None
    if test:
        evaluator = Evaluator(model)
        evaluate = lambda: evaluator(data.eval_batches(*test, mean.numpy(),  # noqa: E731
                                                       config.eval_batch_size))
    folders = distribution.WorkerFolders(cluster)
    outputs = _Outputs(out, folders, manager, ckpt,
                       folders.summary_writer(config.log_path, 'train'),
                       folders.summary_writer(config.log_path, 'eval') if test else None,
                       on_step, on_record, cluster.is_chief,
                       distribution.stop_agreement(cluster))
    if cluster.is_chief:
        out('checkpoints: %s   TensorBoard: tensorboard --logdir=%s'
            % (config.ckpt_path, config.log_path))
    result = TrainResult(step=start, checkpoint=latest)
    try:
        with StopRequests(out) as stop:
            _loop(config, train_step, batches, evaluate, outputs, stop, result)
    except distribution.PEER_ERRORS as e:
        if cluster.name != 'multi_worker':
            raise
        raise UserError('worker %d: lost contact with the other workers (%s); the last '
                        'checkpoint is %s: start every worker again with the same command to '
                        'resume from it' % (cluster.worker_index, distribution.reason(e),
                                             result.checkpoint)) from None
    finally:
        folders.close()
    outputs.writer.flush()
    if cluster.distributed:
        out('weights digest %s (the same on every worker of a synchronous run)'
            % distribution.weights_digest(cluster, model.trainable_variables))
    return result


def _keep_strided_padding(saved, model_config, out):
    """A checkpoint from before the symmetric strided padding goes on training with its own."""
    if saved.config.strided_padding == model_config.strided_padding:
        return model_config
    out('note: %s was trained with TensorFlow\'s SAME padding at its strided convolutions '
        '(checkpoints before the symmetric padding); it goes on with that padding'
        % saved.prefix)
    return dataclasses.replace(model_config, strided_padding=saved.config.strided_padding)


@dataclasses.dataclass
class _Outputs:
    """Where a run's results go: progress lines, checkpoints, summaries, the caller's hooks."""
    out: Callable
    folders: distribution.WorkerFolders
    manager: tf.train.CheckpointManager
    ckpt: tf.train.Checkpoint
    writer: object
    eval_writer: object
    on_step: Optional[Callable]
    on_record: Optional[Callable]
    chief: bool
    any_stop: Callable          # this worker's stop request -> whether any worker's stops


def _loop(config, train_step, batches, evaluate, o, stop, result):
    """Steps until num_iterations or a stop request; logs, evaluates and saves on the way."""
    window = []
    window_start = time.perf_counter()
    for current, (batch_images, batch_labels) in enumerate(batches, result.step + 1):
        window.append(train_step(batch_images, batch_labels))
        if o.on_step:
            o.on_step(current)
        last = current == config.num_iterations
        stopping = o.any_stop(stop.signum)
        logged = current % config.log_per_iterations == 0 or last or stopping
        if logged:
            means = _window_means(window, current)
            now = time.perf_counter()
            rate = len(window) * config.batch_size / (now - window_start)
            window, window_start = [], now
            _write_summaries(o.writer, means, rate, current)
            o.out('step %d/%d  loss %.4f  accuracy %.3f  lr %g  %.0f img/s  left %s%s'
                  % (current, config.num_iterations, means['loss'], means['accuracy'],
                     means['learning_rate'], rate,
                     format_duration((config.num_iterations - current)
                                     * config.batch_size / rate),
                     '  skipped %d non-finite steps' % means['skipped_steps']
                     if means.get('skipped_steps') else ''))
            result.last_metrics = means
            if o.on_record:
                o.on_record(current, 'train', means)
        if evaluate and (current % config.eval_every == 0 or last):
            # Every worker evaluates (reading the averaged BN statistics is a collective).
            metrics = evaluate()
            with o.eval_writer.as_default(step=current):
                tf.summary.scalar('cross_entropy', metrics.cross_entropy)
                tf.summary.scalar('accuracy', metrics.accuracy)
            if o.chief:
                o.out('step %d: test cross-entropy %.4f  accuracy %.2f%%'
                      % (current, metrics.cross_entropy, 100 * metrics.accuracy))
            if o.on_record:
                o.on_record(current, 'test', {'cross_entropy': metrics.cross_entropy,
                                              'accuracy': metrics.accuracy})
        if logged:
            result.checkpoint = _save(o.folders, o.manager, o.ckpt, current, result.checkpoint)
        result.step = current
        if stopping:
            result.stopped_by = stop.signum or signal.SIGTERM     # another worker's request
            o.out('stopped at step %d; checkpoint %s; run the same command to resume'
                  % (current, result.checkpoint))
            break


def _window_means(window, current):
    """Means of the window's step metrics over the steps that updated the weights.

    A non-finite loss in a step that did update (nan_policy "stop") ends the run
    before anything is saved, so the last checkpoint stays the last good one.
    """
    values = {k: np.array([float(m[k]) for m in window]) for k in window[0]}
    skipped = values.pop('skipped', np.zeros(len(window))) > 0
    bad = ~np.isfinite(values['loss']) & ~skipped
    if bad.any():
        first = current - len(window) + 1 + int(np.argmax(bad))
        raise UserError('the loss became %s at step %d; stopped without saving, so the last '
                        'checkpoint is the last good one (lower --lr_values, or '
                        '--nan_policy=skip_step to skip such steps)'
                        % (values['loss'][int(np.argmax(bad))], first))
    if skipped.all():
        raise UserError('every step from %d to %d had a non-finite loss or gradient and was '
                        'skipped; stopped (lower --lr_values)'
                        % (current - len(window) + 1, current))
    means = {k: float(v[~skipped].mean()) for k, v in values.items()}
    means['skipped_steps'] = int(skipped.sum())
    return means


def _save(folders, manager, ckpt, current, last_good):
    """Saves (see WorkerFolders.save); a failure (a full disk, a folder gone) is one line."""
    try:
        return folders.save(manager, ckpt, current)
    except (OSError, tf.errors.OpError) as e:
        if isinstance(e, distribution.PEER_ERRORS) and folders.cluster.name == 'multi_worker':
            raise                       # a lost worker, not a disk problem: train() reports it
        raise UserError('could not save the checkpoint of step %d in %s (%s); the last good '
                        'checkpoint is %s' % (current, manager.directory,
                                              getattr(e, 'strerror', None) or
                                              str(e).strip().splitlines()[0], last_good)) from None


def _write_summaries(writer, means, rate, current):
    with writer.as_default(step=current):
        for name, value in means.items():
            tf.summary.scalar(name, value)
        tf.summary.scalar('images_per_second', rate)


def _recipe_changes(before, after):
    """What differs between two recipes; a setting the older one lacks had its default."""
    defaults = json.loads(TrainConfig(ckpt_path='', log_path='').recipe_json())
    before, after = dict(defaults, **json.loads(before or '{}')), json.loads(after)
    return ', '.join('%s %s -> %s' % (k, before.get(k), after.get(k))
                     for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k))
