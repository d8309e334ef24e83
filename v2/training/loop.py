"""The training loop: set-up in named steps, then training steps, windows, evaluations, saves.

train() checks everything that can be checked before the first step (the data,
the folders, a checkpoint already there), builds the training state, restores it,
traces the step, and loops to recipe.num_iterations. A window of steps ends at
every logging step: its metrics are read from the device once, checked (a non-
finite loss stops the run before anything is saved), printed and summarised.
Checkpoints are written at the end of windows (see RunOptions.save_every), at the
end, and when a stop is requested.
"""

import dataclasses
import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from v2.data import cifar, pipeline
from v2.errors import UserError
from v2.evaluation.evaluate import Evaluator
from v2.nets.model import ModelConfig, build, count_parameters
from v2.training import checkpoint, devices, distribution, precision
from v2.training.ema import WeightAverage
from v2.training.optimizer import Momentum
from v2.training.recipe import Recipe, RunOptions
from v2.training.step import METRICS, StepParts, Window, make_train_steps, make_window_end


@dataclasses.dataclass
class TrainResult:
    step: int
    checkpoint: str | None  # the last checkpoint written or restored
    stopped_by: int = 0        # the signal that stopped training early, if any
    last_metrics: dict = None  # the means of the last logging window


def prepare_folder(path, setting):
    """Creates `path` if needed and checks that files can be written there."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError('%s=%s is a file; it must be a folder' % (setting, path),
                        settings=(setting,))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError('%s=%s: cannot write there (%s)' % (setting, path, e.strerror or e),
                        settings=(setting,)) from None


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


def format_duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return '%dh%02dm' % (seconds // 3600, seconds % 3600 // 60)
    return '%dm%02ds' % (seconds // 60, seconds % 60)


@dataclasses.dataclass
class TrainingData:
    """The checked images of a run: uint8 training part, held-out part, test set, pixel mean."""
    images: tf.Tensor
    labels: tf.Tensor
    mean: np.ndarray
    evaluation: tuple | None = None        # (images, labels) evaluated every eval_every
    evaluation_split: str = 'test'            # or 'validation'


def load_training_data(model_config, recipe, data_path, evaluate=False):
    """The checked training set (at least one batch), its pixel mean and the evaluation set.

    With recipe.validation_split the last images are held out: they are what
    eval_every evaluates, and the mean comes from the rest alone.
    """
    spec = cifar.DATASETS[model_config.dataset]
    images, labels = cifar.load_split(data_path, spec, 'train')
    (images, labels), held_out = cifar.hold_out(images, labels, recipe.validation_split, data_path)
    if recipe.batch_size > images.shape[0]:
        raise UserError('batch_size=%d is larger than the %d training images in %s'
                        % (recipe.batch_size, images.shape[0], data_path),
                        settings=('batch_size',))
    data = TrainingData(images, labels, cifar.pixel_mean(images))
    if held_out is not None:
        data.evaluation, data.evaluation_split = held_out, 'validation'
    elif evaluate:
        data.evaluation = cifar.load_split(data_path, spec, 'test')
    return data


def check_free_space(path, ckpt_bytes, keep):
    """Refuses to start when the folder cannot hold the checkpoints it will keep."""
    free = shutil.disk_usage(path).free
    needed = ckpt_bytes * (keep + 1)             # the kept ones and the one being written
    if free < needed:
        raise UserError('ckpt_path=%s: %.1f MB free, but %d checkpoints of %.1f MB need '
                        '%.1f MB; free some space or lower max_to_keep'
                        % (path, free / 1e6, keep + 1, ckpt_bytes / 1e6, needed / 1e6),
                        settings=('ckpt_path', 'max_to_keep'))


def dry_run(model_config, recipe, data_path, out=print):
    """Checks the data and builds the input pipeline without training; prints what it found."""
    data = load_training_data(model_config, recipe, data_path)
    batches = pipeline.train_batches(data.images, data.labels, recipe.batch_size, recipe.seed,
                                     0, recipe.num_iterations)
    batch_images, _ = next(iter(batches))
    out('input pipeline: %d training images in %s, %d steps per epoch, batches of %s; '
        'dry run: nothing trained or written'
        % (data.images.shape[0], data_path, data.images.shape[0] // recipe.batch_size,
           'x'.join(str(d) for d in batch_images.shape)))


def training_batches(data, recipe, start, on_host, mean):
    """The run's batches from step `start`: uint8, prepared inside the step on the device
    (a quarter of float32's bytes to a GPU), or, on_host, prepared by tf.data's threads.

    On a one-CPU run the host's threads overlap the preparation with the step: 5% of a
    ResNet-20 bf16 step on 2 cores, measured with v2.tools.benchmark. The batches are the
    same either way (tests/test_train.py).
    """
    if on_host:
        return pipeline.augmented_batches(data.images, data.labels, mean, recipe.batch_size,
                                          recipe.seed, start, recipe.num_iterations,
                                          recipe.cutout)
    return pipeline.train_batches(data.images, data.labels, recipe.batch_size, recipe.seed,
                                  start, recipe.num_iterations)


def prepares_on_host(prepare_batches, on_gpu, cluster):
    """Whether the batches are prepared by tf.data on the host (see RunOptions)."""
    if prepare_batches == 'host' and cluster.distributed:
        raise UserError('prepare_batches=host: only one-device runs prepare their batches on '
                        'the host; drop it, or use device', settings=('prepare_batches',))
    if prepare_batches == 'auto':
        return not on_gpu and not cluster.distributed
    return prepare_batches == 'host'


@dataclasses.dataclass
class State:
    """Everything a step changes and a checkpoint holds."""
    model: tf.Module
    optimizer: Momentum
    step: tf.Variable
    window: Window
    mean: tf.Variable
    loss_scale: precision.DynamicLossScale | None = None
    ema: WeightAverage | None = None

    def checkpoint(self, recipe, loss_scale=True, ema=True):
        """Its tf.train.Checkpoint; loss_scale/ema False leave those out (older checkpoints)."""
        return checkpoint.make(self.model, self.mean, self.step, self.optimizer,
                               recipe.to_json(), self.loss_scale if loss_scale else None,
                               self.ema if ema else None)


def build_state(model_config, recipe, cluster, dtype, mean):
    """The network, optimizer, step counter, metric sums (and loss scale, weight averages)."""
    with cluster.strategy.scope():
        model = build(model_config, seed=recipe.seed, compute_dtype=dtype,
                      bn_momentum=recipe.bn_momentum, sync_batch_norm=recipe.sync_batch_norm,
                      zero_init_residual=recipe.zero_init_residual)
        state = State(
            model=model,
            optimizer=Momentum(model.trainable_variables, recipe.momentum, recipe.nesterov),
            step=tf.Variable(0, dtype=tf.int64, trainable=False, name='step',
                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA),
            window=Window(),
            mean=tf.Variable(mean, trainable=False, name='pixel_mean'),
            loss_scale=precision.DynamicLossScale() if dtype == tf.float16 else None)
        if recipe.ema_decay:
            state.ema = WeightAverage(model, recipe.ema_decay)
    return state


def step_parts(state, recipe):
    """What the traced step reads and writes, for this state and recipe (the trainer's,
    and so the benchmark's)."""
    return StepParts(model=state.model, optimizer=state.optimizer, schedule=recipe.schedule,
                     step=state.step, window=state.window, pixel_mean=state.mean,
                     weight_decay=recipe.weight_decay, seed=recipe.seed,
                     label_smoothing=recipe.label_smoothing, cutout=recipe.cutout,
                     loss_scale=state.loss_scale,
                     skip_non_finite=recipe.nan_policy == 'skip_step', ema=state.ema)


def restore(state, recipe, saved, out):
    """Restores a run's state from its latest checkpoint; says what changed in the recipe.

    A run resumed with weight averaging or float16 newly on starts its averages from
    the restored weights, and its loss scale afresh.
    """
    checkpoint.restore(state.checkpoint(recipe, loss_scale=saved.has_loss_scale,
                                        ema=saved.has_ema), saved.prefix)
    if state.ema and not saved.has_ema:
        for average, variable in zip(state.ema.averages, state.model.variables):
            average.assign(variable.read_value())
    changes = recipe.changes_from(saved.training_json)
    if saved.training_json and changes:
        out('note: resuming with training settings that differ from the checkpoint\'s: %s'
            % changes)


def keep_strided_padding(saved, model_config, out):
    """A checkpoint goes on training with the strided padding it was trained with (those
    from before the symmetric padding have TensorFlow's SAME)."""
    if saved.config.strided_padding == model_config.strided_padding:
        return model_config
    out('note: %s was trained with strided_padding=%s; it goes on with that padding'
        % (saved.prefix, saved.config.strided_padding))
    return dataclasses.replace(model_config, strided_padding=saved.config.strided_padding)


def train(model_config: ModelConfig, recipe: Recipe, options: RunOptions, data_path: str,
          out: Callable = print, on_step: Callable | None = None,
          on_record: Callable | None = None) -> TrainResult:
    """Trains (or resumes training) to recipe.num_iterations; returns a TrainResult.

    on_step(step), if given, is called after every call of the traced step (every
    step with steps_per_call 1). on_record(step, split, metrics), if given,
    receives every logged window's means (split 'train') and every evaluation
    ('test' or 'validation'), always before the checkpoint of that step is
    written, so a caller's record never lags the checkpoints it resumes from.

    options.distribution_strategy picks the tf.distribute strategy; devices and the
    strategy are set up first, as TensorFlow requires. Under multi_worker every
    worker runs this function; only the chief (worker 0) writes into ckpt_path and
    the log folder.
    """
    # 1. Devices and strategy, before any other TensorFlow work.
    used = devices.setup(options.distribution_strategy, options.devices, options.tf32, out,
                         options.cpu_devices)
    on_gpu = any(d.kind == 'GPU' for d in used)
    cluster = distribution.make_cluster(options.distribution_strategy, options.devices,
                                        options.cpu_devices, options.worker_timeout, on_gpu)
    if not cluster.is_chief:
        def out(line, say=out):
            return (say('worker %d: %s' % (cluster.worker_index, line)))
    distribution.check_batch(recipe.batch_size, cluster)
    on_host = prepares_on_host(options.prepare_batches, on_gpu, cluster)
    jit = use_xla(options.jit_compile, recipe, model_config, cluster.replicas, used, out)
    # 2. The data, the folders and a checkpoint already there, checked before anything runs.
    data = load_training_data(model_config, recipe, data_path, evaluate=bool(options.eval_every))
    if cluster.is_chief:
        prepare_folder(options.ckpt_path, 'ckpt_path')
        prepare_folder(options.logs, 'log_path')
    latest = tf.train.latest_checkpoint(options.ckpt_path)
    saved = checkpoint.Saved(latest) if latest else None
    if saved:
        model_config = keep_strided_padding(saved, model_config, out)
        saved.check_matches(dataclasses.asdict(model_config))
    # 3. The state, restored from the checkpoint.
    dtype = precision.compute_dtype(recipe.precision, used, warn=out)
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()
    state = build_state(model_config, recipe, cluster, dtype, data.mean)
    ckpt = state.checkpoint(recipe)
    if cluster.is_chief:
        check_free_space(options.ckpt_path, sum(
            v.shape.num_elements() * v.dtype.size
            for v in state.model.variables + state.optimizer.variables), options.max_to_keep)
        for partial in checkpoint.remove_partial_saves(options.ckpt_path):
            out('removed %s, left by a save that was cut off' % partial)
    manager = tf.train.CheckpointManager(ckpt, options.ckpt_path, max_to_keep=options.max_to_keep)
    if saved:
        restore(state, recipe, saved, out)
    start = int(state.step.numpy())
    if cluster.name == 'multi_worker':
        distribution.check_same_step(cluster, state.step, options.ckpt_path)
    out('%s: %s trainable parameters; %d training images, batch %d, %s, %s; %s'
        % (model_config.describe(), format(count_parameters(state.model), ','),
           data.images.shape[0], recipe.batch_size, dtype.name, cluster.describe(used),
           'resuming at step %d from %s' % (start, latest) if saved else 'starting at step 0'))
    if start >= recipe.num_iterations:
        out('step %d already reaches num_iterations=%d: nothing to train'
            % (start, recipe.num_iterations))
        return TrainResult(step=start, checkpoint=latest)
    # 4. The traced step, its input and the run's outputs.
    train_steps = make_train_steps(step_parts(state, recipe), cluster.strategy,
                                   recipe.batch_size, jit)
    agree = cluster.name == 'multi_worker'
    window_end = make_window_end(state.window, cluster.strategy, agree, state.loss_scale)
    batches = distribution.distribute_batches(
        cluster, lambda: training_batches(data, recipe, start, on_host, state.mean.numpy()),
        recipe.batch_size, device='/gpu:0' if on_gpu and not cluster.distributed else None)
    folders = distribution.WorkerFolders(cluster)
    outputs = Outputs(out, folders, manager, ckpt,
                      folders.summary_writer(options.logs, 'train'),
                      folders.summary_writer(options.logs, data.evaluation_split)
                      if data.evaluation is not None and options.eval_every else None,
                      on_step, on_record, cluster.is_chief)
    evaluate = (_evaluation(state, data, options, model_config, dtype)
                if data.evaluation is not None and options.eval_every else None)
    if cluster.is_chief:
        out('checkpoints: %s   TensorBoard: tensorboard --logdir=%s'
            % (options.ckpt_path, options.logs))
    # 5. The loop.
    result = TrainResult(step=start, checkpoint=latest)
    try:
        with StopRequests(out) as stop:
            _loop(recipe, options, train_steps, window_end, agree, iter(batches), evaluate,
                  outputs, stop, result, data.evaluation_split)
    except distribution.PEER_ERRORS as e:
        if cluster.name != 'multi_worker' or not distribution.is_peer_loss(e):
            raise
        raise UserError('worker %d: lost contact with the other workers (%s); the last '
                        'checkpoint is %s: start every worker again with the same command to '
                        'resume from it' % (cluster.worker_index, distribution.reason(e),
                                             result.checkpoint)) from None
    finally:
        folders.close()
        for writer in (outputs.writer, outputs.eval_writer):
            if writer is not None:
                writer.flush()
    if cluster.distributed:
        out('weights digest %s (the same on every worker of a synchronous run)'
            % distribution.weights_digest(cluster, state.model.trainable_variables))
    return result


def use_xla(jit_compile, recipe, model_config, replicas, used, out=print):
    """Whether to compile the step: as asked, or where it pays (devices.jit_by_default).

    Two combinations XLA cannot compile are refused when asked for, and run without
    XLA by default:
    - pooled batch-norm statistics over several replicas put an all-reduce inside the
      forward pass, which XLA cannot compile across devices;
    - op determinism on a GPU with max pooling (VGG): XLA's GPU backend refuses the
      gradient of max pooling (select-and-scatter) when determinism is required.
    """
    on_gpu = any(d.kind == 'GPU' for d in used)
    refusals = []
    if recipe.sync_batch_norm and replicas > 1:
        refusals.append(('sync_batch_norm over %d replicas: the statistics\' all-reduce sits '
                         'inside the compiled forward pass, which XLA cannot compile across '
                         'devices' % replicas, ('jit_compile', 'sync_batch_norm')))
    if recipe.deterministic and on_gpu and model_config.model == 'vgg':
        refusals.append(('deterministic for model=vgg on a GPU: XLA refuses the gradient of '
                         'max pooling (select-and-scatter) under op determinism',
                         ('jit_compile', 'deterministic', 'model')))
    if jit_compile and refusals:
        why, settings = refusals[0]
        raise UserError('jit_compile with %s; drop one of them' % why, settings=settings)
    if jit_compile is None:
        if refusals and devices.jit_by_default(used):
            out('note: XLA is off for this run (it would be on here): %s' % refusals[0][0])
        return devices.jit_by_default(used) and not refusals
    return jit_compile


def _evaluation(state, data, options, model_config, dtype):
    """A function: evaluate the live (or, with weight averaging, the averaged) net now.

    It evaluates a copy built outside the strategy, given the weights (and the batch-
    norm statistics, averaged over the replicas) once per evaluation: the training net
    under a strategy would reduce its statistics over the replicas at every batch.
    """
    net = build(model_config, compute_dtype=dtype)
    evaluator = Evaluator(net, tf.Variable(state.mean.read_value(), trainable=False))

    def evaluate():
        sources = state.ema.averages if state.ema else state.model.variables
        for target, source in zip(net.variables, sources):
            target.assign(source.read_value())
        return evaluator(pipeline.eval_batches(*data.evaluation, options.eval_batch_size))
    return evaluate


@dataclasses.dataclass
class Outputs:
    """Where a run's results go: progress lines, checkpoints, summaries, the caller's hooks."""
    out: Callable
    folders: distribution.WorkerFolders
    manager: tf.train.CheckpointManager
    ckpt: tf.train.Checkpoint
    writer: object
    eval_writer: object
    on_step: Callable | None
    on_record: Callable | None
    chief: bool


def read(tensor):
    """The loop's one way to bring a value from the device to the host (counted by a test)."""
    return tensor.numpy()


def _next_boundary(current, recipe, options):
    """The next step after `current` where a call of the traced steps must end."""
    ends = [recipe.num_iterations, (current // options.log_per_iterations + 1)
            * options.log_per_iterations]
    if options.eval_every:
        ends.append((current // options.eval_every + 1) * options.eval_every)
    return min(min(ends), current + options.steps_per_call)


def _loop(recipe, options, train_steps, window_end, agreed, iterator, evaluate, o, stop, result,
          evaluation_split):
    """Steps until num_iterations or a stop request; logs, evaluates and saves on the way.

    Under multi_worker (`agreed`) a stop request takes effect at the next logging
    step, where the workers agree on it; otherwise at the end of the current call.
    """
    current = result.step
    window_steps, window_start = 0, time.perf_counter()
    last_save_step, last_save_time = current, time.monotonic()
    while current < recipe.num_iterations:
        n = _next_boundary(current, recipe, options) - current
        train_steps(iterator, tf.constant(n, tf.int32))
        current += n
        window_steps += n
        if o.on_step:
            o.on_step(current)
        last = current == recipe.num_iterations
        logged = current % options.log_per_iterations == 0 or last or (stop.signum and not agreed)
        stopping = save = False
        if logged:
            save_due = (current - last_save_step >= options.save_every or last or
                        (options.save_every_secs and
                         time.monotonic() - last_save_time >= options.save_every_secs))
            vector = read(window_end(tf.constant([float(bool(stop.signum)), float(save_due)])))
            means = window_means(vector, current, window_steps)
            stopping, save = vector[-2] > 0, vector[-1] > 0 or vector[-2] > 0 or last
            rate = window_steps * recipe.batch_size / (time.perf_counter() - window_start)
            means['images_per_second'] = rate
            window_steps = 0
            _write_summaries(o.writer, means, current)
            o.out('step %d/%d  loss %.4f  accuracy %.3f  lr %.6g  %.0f img/s  left %s%s'
                  % (current, recipe.num_iterations, means['loss'], means['accuracy'],
                     means['learning_rate'], rate,
                     format_duration((recipe.num_iterations - current) * recipe.batch_size
                                     / rate),
                     '  skipped %d non-finite steps' % means['skipped_steps']
                     if means.get('skipped_steps') else ''))
            result.last_metrics = means
            if o.on_record:
                o.on_record(current, 'train', means)
        if evaluate and (current % options.eval_every == 0 or last):
            # Every worker evaluates (reading the averaged BN statistics is a collective).
            metrics = evaluate()
            with o.eval_writer.as_default(step=current):
                tf.summary.scalar('cross_entropy', metrics.cross_entropy)
                tf.summary.scalar('accuracy', metrics.accuracy)
            if o.chief:
                o.out('step %d: %s cross-entropy %.4f  accuracy %.2f%%'
                      % (current, evaluation_split, metrics.cross_entropy,
                         100 * metrics.accuracy))
            if o.on_record:
                o.on_record(current, evaluation_split, {'cross_entropy': metrics.cross_entropy,
                                                        'accuracy': metrics.accuracy})
        if save:
            result.checkpoint = _save(o.folders, o.manager, o.ckpt, current, result.checkpoint)
            last_save_step, last_save_time = current, time.monotonic()
        if logged:             # the next window's time starts after this one's evaluation and save
            window_start = time.perf_counter()
        result.step = current
        if stopping:
            result.stopped_by = stop.signum or signal.SIGTERM     # another worker's request
            o.out('stopped at step %d; checkpoint %s; run the same command to resume'
                  % (current, result.checkpoint))
            break


def window_means(vector, current, steps):
    """The means of a window's metrics over the steps that updated the weights.

    `vector` is what window_end read: the sums of METRICS, the counts of updated and
    skipped steps, the first step with a non-finite loss or gradient (or -1), and
    the loss scale where there is one. Such a step (nan_policy 'stop') ends the run
    before anything is saved, so the last checkpoint stays the last good one. A window
    whose every step was skipped ends it too, unless float16's loss scale is still
    coming down to where the gradients fit.
    """
    sums = vector[:len(METRICS)]
    updated, skipped, first_bad = vector[len(METRICS):len(METRICS) + 3]
    if first_bad >= 0:
        raise UserError('the loss or its gradients became non-finite at step %d; stopped '
                        'without saving, so the last checkpoint is the last good one (lower '
                        'lr_values, or '
                        'nan_policy=skip_step to skip such steps)' % (int(first_bad) + 1),
                        settings=('lr_values', 'nan_policy'))
    loss_scale = float(vector[len(METRICS) + 3]) if len(vector) > len(METRICS) + 5 else None
    if not updated and not (loss_scale and loss_scale > 1):    # float16's scale still adapts
        raise UserError('every step from %d to %d had a non-finite loss or gradient and was '
                        'skipped; stopped (lower lr_values)' % (current - steps + 1, current),
                        settings=('lr_values',))
    means = {name: float(total / updated) if updated else float('nan')
             for name, total in zip(METRICS, sums)}
    means['skipped_steps'] = int(skipped)
    if loss_scale is not None:
        means['loss_scale'] = loss_scale
    return means


def _save(folders, manager, ckpt, current, last_good):
    """Saves (see WorkerFolders.save); a failure (a full disk, a folder gone) is one line."""
    try:
        return folders.save(manager, ckpt, current)
    except (OSError, tf.errors.OpError) as e:
        if distribution.is_peer_loss(e) and folders.cluster.name == 'multi_worker':
            raise                       # a lost worker, not a disk problem: train() reports it
        raise UserError('could not save the checkpoint of step %d in %s (%s); the last good '
                        'checkpoint is %s' % (current, manager.directory,
                                              getattr(e, 'strerror', None) or
                                              str(e).strip().splitlines()[0], last_good)) from None


def _write_summaries(writer, means, current):
    with writer.as_default(step=current):
        for name, value in means.items():
            tf.summary.scalar(name, value)
