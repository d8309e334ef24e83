"""The training loop: set up, check, then train to num_iterations.

train() sets up the devices and the strategy, takes the run folder's lock (one
trainer per folder, v2.runtime.lock), checks everything that can be checked
before the first step (v2.training.preflight), creates the training state and
restores it from the latest checkpoint (v2.training.state), and then loops: it runs
the traced steps up to the next step where something is due, and there logs the
window (one read from the device), evaluates and saves (v2.training.actions). A
non-finite loss stops the run at its window's end, before anything is saved.
"""

import dataclasses
import os
import signal
from collections.abc import Callable

import tensorflow as tf

from v2.errors import UserError
from v2.nets.model import ModelConfig, build, count_parameters
from v2.runtime import devices, distribution, lock, memory, precision
from v2.training import actions, distill, inputs, preflight, record
from v2.training.recipe import Recipe, RunOptions
from v2.training.state import TrainState


@dataclasses.dataclass
class TrainResult:
    step: int
    checkpoint: str | None  # the last checkpoint written or restored
    stopped_by: int = 0        # the signal that stopped training early, if any
    last_metrics: dict = None  # the means of the last logging window


@dataclasses.dataclass
class Loop:
    """What the loop runs: the traced steps and their batches, and the actions."""
    train_steps: Callable
    batches: object
    log: actions.Log
    evaluate: actions.Evaluate | None
    save: actions.Save
    on_step: Callable | None
    keep_best: actions.KeepBest | None = None

    def next_stop(self, current, total, steps_per_call):
        """The next step after `current` where a call of the traced steps must end."""
        ends = [total, (current // self.log.every + 1) * self.log.every]
        if self.evaluate:
            ends.append((current // self.evaluate.every + 1) * self.evaluate.every)
        return min(min(ends), current + steps_per_call)

    def run(self, start, total, steps_per_call, stop):
        """Steps from `start` to `total` or a stop request; returns (step, stopping signal)."""
        current = start
        while current < total:
            n = self.next_stop(current, total, steps_per_call) - current
            self.train_steps(self.batches, tf.constant(n, tf.int32))
            current += n
            self.log.count(n)
            if self.on_step:
                self.on_step(current)
            last = current == total
            window = None
            if self.log.due(current, last, stop.signum):
                window = self.log(current, stop=bool(stop.signum),
                                  save=self.save.due(current, last))
            if self.evaluate and self.evaluate.due(current, last):
                metrics = self.evaluate(current)
                if self.keep_best:
                    self.keep_best(current, metrics.accuracy)
            if window and (window['save'] or window['stop'] or last):
                self.save(current)
            if window:
                self.log.restart_clock()
            if window and window['stop']:
                return current, stop.signum or signal.SIGTERM       # another worker's request
        return current, 0


def train(model_config: ModelConfig, recipe: Recipe, options: RunOptions, data_path: str,
          out: Callable = print, on_step: Callable | None = None,
          on_record: Callable | None = None) -> TrainResult:
    """Trains (or resumes training) to recipe.num_iterations; returns a TrainResult.

    on_step(step), if given, is called after every call of the traced step (every
    step with steps_per_call 1). on_record(step, split, metrics), if given,
    receives every logged window's means (split 'train') and every evaluation
    ('test' or 'validation'), always before the checkpoint of that step is
    written, so a caller's record never lags the checkpoints it resumes from.
    The same records go to <log_path>/metrics.csv, and the network and recipe to
    TensorBoard's HParams dashboard (v2.training.record).

    options.distribution_strategy picks the tf.distribute strategy; devices and the
    strategy are set up first, as TensorFlow requires. Under multi_worker every
    worker runs this function; only the chief (worker 0) writes into ckpt_path and
    the log folder, and holds ckpt_path's lock (v2.runtime.lock) while it runs; each
    other worker locks its own scratch folder.
    """
    # 1. Devices and strategy, before any other TensorFlow work; the teacher, if any.
    setup = set_up(model_config, recipe, options, out)
    recipe = with_teacher(recipe, model_config, setup.out)
    # 2. The data, checked before anything runs; then the run folder, locked for this run.
    data = inputs.load_training_data(model_config, recipe, data_path,
                                     evaluate=bool(options.eval_every))
    folders = distribution.WorkerFolders(setup.cluster)
    run_lock = None
    try:
        if setup.cluster.is_chief:
            preflight.prepare_folder(options.ckpt_path, 'ckpt_path')
            run_lock = lock.RunLock(options.ckpt_path, 'ckpt_path', setup.out).acquire()
            logs_before = _paths_under(options.logs)
            preflight.prepare_folder(options.logs, 'log_path')
        else:                       # the other workers write only into a scratch folder
            run_lock = lock.RunLock(folders.scratch, 'scratch', setup.out).acquire()
            logs_before = None
        return _train_in(setup, data, data_path, folders, model_config, recipe, options,
                         on_step, on_record, logs_before)
    finally:
        if run_lock:
            run_lock.release()
        folders.close()


def _paths_under(folder):
    """Every file and folder below `folder` (and itself), or none where it does not exist."""
    paths = set()
    for root, dirs, files in os.walk(folder):
        paths.add(root)
        paths.update(os.path.join(root, name) for name in dirs + files)
    return paths


def _forget_new_logs(folder, before):
    """Removes what this run added below `folder` (event files, a new metrics.csv, their
    folders) when it ended before its first window: a run that never trained must not
    stay in TensorBoard's runs and HParams table. Nothing that was there before is touched."""
    for path in sorted(_paths_under(folder) - before, key=len, reverse=True):
        if os.path.isdir(path):
            if not os.listdir(path):
                os.rmdir(path)
        else:
            os.remove(path)


def _train_in(setup, data, data_path, folders, model_config, recipe, options, on_step,
              on_record, logs_before):
    """train() once the folder is this run's: restore, then the loop; out of device
    memory is one line naming the last good checkpoint (logs_before: the log folder's
    paths before this run, to leave it as it was when memory runs out before the first
    window)."""
    cluster, out = setup.cluster, setup.out
    saved, model_config = preflight.checkpoint_there(options.ckpt_path, model_config, out,
                                                     may_write=cluster.is_chief)
    if saved:       # a changed split or teacher is refused before anything is built
        recipe.changes_from(saved.training_json)
    result = TrainResult(step=0, checkpoint=saved.prefix if saved else None)
    loop = None
    try:
        # 3. The state, restored from the checkpoint.
        state, dtype = _restored_state(setup, model_config, recipe, options, data, saved)
        start = result.step = int(state.step.numpy())
        if cluster.multi_worker:
            distribution.check_same_step(cluster, state.step, options.ckpt_path)
        out(first_line(model_config, count_parameters(state.model), data, data_path, recipe,
                       dtype, setup, 'resuming at step %d from %s' % (start, saved.prefix)
                       if saved else 'starting at step 0'))
        _say_faster_precision(recipe, dtype, setup)
        if start >= recipe.num_iterations:
            out('step %d already reaches num_iterations=%d: nothing to train'
                % (start, recipe.num_iterations))
            return result
        # 4. The traced steps, their batches and the actions; then the loop.
        loop = _make_loop(setup=setup, state=state, recipe=recipe, options=options, data=data,
                          dtype=dtype, model_config=model_config, folders=folders, start=start,
                          last_checkpoint=result.checkpoint, on_step=on_step,
                          on_record=on_record)
        if cluster.is_chief:
            out('checkpoints: %s   TensorBoard: tensorboard --logdir=%s'
                % (options.ckpt_path, options.logs))
        try:
            with actions.StopRequests(out) as stop:
                result.step, result.stopped_by = loop.run(start, recipe.num_iterations,
                                                          options.steps_per_call, stop)
        except distribution.PEER_ERRORS as e:
            if not cluster.multi_worker or not distribution.is_peer_loss(e):
                raise
            raise UserError('worker %d: lost contact with the other workers (%s); the last '
                            'checkpoint is %s: start every worker again with the same command '
                            'to resume from it' % (cluster.worker_index, distribution.reason(e),
                                                   loop.save.last)) from None
        finally:
            for action in (loop.log, loop.evaluate):
                if action is not None:
                    action.writer.flush()
    except memory.OOM as e:
        if logs_before is not None and (loop is None or loop.log.means is None):
            for action in (loop.log, loop.evaluate) if loop else ():
                if action is not None:
                    action.writer.close()
            _forget_new_logs(options.logs, logs_before)
        evaluating = getattr(e, 'evaluating', False)
        raise memory.out_of_memory(
            e, doing='evaluating' if evaluating else 'training',
            network=model_config.describe(),
            batch_size=options.eval_batch_size if evaluating else recipe.batch_size,
            batch_setting='eval_batch_size' if evaluating else 'batch_size',
            precision=recipe.precision, used=setup.used, checkpoints=True,
            last_checkpoint=loop.save.last if loop else result.checkpoint) from None
    result.checkpoint, result.last_metrics = loop.save.last, loop.log.means
    if result.stopped_by:
        out('stopped at step %d; checkpoint %s; run the same command to resume'
            % (result.step, result.checkpoint))
    if cluster.distributed:
        out('weights digest %s (the same on every worker of a synchronous run)'
            % distribution.weights_digest(cluster, state.model.trainable_variables))
    return result


def first_line(model_config, parameters, data, data_path, recipe, dtype, setup, where):
    """What the run computes, where and how: the network, the data, the devices, the precision
    as computed, XLA, where batches are prepared, and the step it starts from."""
    return ('%s: %s trainable parameters; %s training images in %s, batch %d; %s; %s, XLA %s, '
            'batches prepared on the %s; %s'
            % (model_config.describe(), format(parameters, ','),
               format(int(data.images.shape[0]), ','), data_path,
               recipe.batch_size, setup.cluster.describe(setup.used), dtype.name,
               'on' if setup.jit else 'off', 'host' if setup.on_host else 'device', where))


def _say_faster_precision(recipe, dtype, setup):
    hint = precision.faster_hint(recipe.precision, dtype, setup.used)
    if hint and setup.cluster.is_chief:
        setup.out(hint)


def dry_run(model_config: ModelConfig, recipe: Recipe, options: RunOptions, data_path: str,
            out: Callable = print):
    """Every check train() makes before its first step, writing nothing: the devices and the
    strategy, XLA, the data, the folders and a checkpoint already there. Prints the run's
    first line; returns (the model_config it would train, the TrainingData)."""
    setup = set_up(model_config, recipe, options, out)
    recipe = with_teacher(recipe, model_config, setup.out)
    data = inputs.load_training_data(model_config, recipe, data_path,
                                     evaluate=bool(options.eval_every))
    saved = None
    for path, setting in ((options.ckpt_path, 'ckpt_path'), (options.logs, 'log_path')):
        preflight.check_folder(path, setting)
    if os.path.isdir(options.ckpt_path):
        saved, model_config = preflight.checkpoint_there(options.ckpt_path, model_config,
                                                         setup.out, may_write=False)
    changes = recipe.changes_from(saved.training_json) if saved else ''   # may refuse
    dtype = precision.compute_dtype(recipe.precision, setup.used, warn=setup.out)
    parameters = count_parameters(build(model_config))
    setup.out(first_line(model_config, parameters, data, data_path, recipe, dtype, setup,
                         'dry run: would resume at step %d from %s' % (saved.step, saved.prefix)
                         if saved else 'dry run: would start at step 0'))
    if changes and saved.training_json:
        setup.out('note: would resume with training settings that differ from the '
                  'checkpoint\'s: %s' % changes)
    _say_faster_precision(recipe, dtype, setup)
    return model_config, data


def with_teacher(recipe, model_config, out):
    """The recipe with its teacher checked (distill) and named exactly: the checkpoint a
    folder named resolved to, as an absolute prefix, and the fingerprint of its weights."""
    if not recipe.teacher_ckpt:
        return recipe
    saved, fingerprint = distill.check_teacher(recipe.teacher_ckpt, model_config.num_classes,
                                               out)
    return dataclasses.replace(recipe, teacher_ckpt=os.path.abspath(saved.prefix),
                               teacher_fingerprint=fingerprint)


def _restored_state(setup, model_config, recipe, options, data, saved):
    """(the run's TrainState, restored from `saved` where there is one; its compute dtype),
    once the folder is known to hold the checkpoints it will keep."""
    dtype = precision.compute_dtype(recipe.precision, setup.used, warn=setup.out)
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()
    state = TrainState.create(model_config, recipe, setup.cluster.strategy, dtype, data.mean)
    if setup.cluster.is_chief:
        best = 1 if recipe.validation_split and options.eval_every else 0
        preflight.check_free_space(options.ckpt_path, state.bytes(), options.max_to_keep + best)
        preflight.remove_partial_saves(options.ckpt_path, setup.out)
    if saved:
        state.restore(recipe, saved, setup.out)
    return state, dtype


@dataclasses.dataclass
class Setup:
    """Where and how a run computes, decided before any data is read."""
    used: list                       # the devices (v2.runtime.devices.Device)
    cluster: distribution.Cluster
    on_host: bool                    # batches prepared by tf.data on the host
    jit: bool                        # the step compiled with XLA
    out: Callable                    # progress lines (a worker's name its own)

    @property
    def on_gpu(self):
        return any(d.kind == 'GPU' for d in self.used)


def set_up(model_config, recipe, options, out) -> Setup:
    """The devices, the strategy, where batches are prepared and XLA: decided first, as
    TensorFlow requires, and refused in one line where they cannot go together."""
    used = devices.setup(options.distribution_strategy, options.devices, options.tf32, out,
                         options.cpu_devices)
    on_gpu = any(d.kind == 'GPU' for d in used)
    cluster = distribution.make_cluster(options.distribution_strategy, options.devices,
                                        options.cpu_devices, options.worker_timeout, on_gpu)
    if not cluster.is_chief:
        def out(line, say=out):
            return say('worker %d: %s' % (cluster.worker_index, line))
    distribution.check_batch(recipe.batch_size, cluster)
    return Setup(used, cluster, inputs.prepares_on_host(options.prepare_batches, on_gpu, cluster),
                 preflight.use_xla(options.jit_compile, recipe, model_config, cluster.replicas,
                                   used, out), out)


def _make_loop(*, setup, state, recipe, options, data, dtype, model_config, folders, start,
               last_checkpoint, on_step, on_record):
    """The Loop of a run: its traced steps, its batches and its actions."""
    cluster = setup.cluster
    if cluster.is_chief:              # the run's CSV and hyper-parameters beside its logs
        on_record = record.both(record.MetricsCsv(options.logs, start), on_record)
        record.write_hyperparameters(options.logs, model_config, recipe, options.ckpt_path)
    batches = distribution.distribute_batches(
        cluster, lambda: inputs.training_batches(data, recipe, start, setup.on_host,
                                                 state.mean.numpy(), model_config.num_classes),
        recipe.batch_size, setup.on_gpu)
    agree = cluster.multi_worker
    log = actions.Log(recipe, options.log_per_iterations,
                      state.window_reader(cluster.strategy, agree),
                      folders.summary_writer(options.logs, 'train'), setup.out, on_record, agree)
    evaluate = None
    if data.evaluation is not None and options.eval_every:
        evaluate = actions.Evaluate(
            state, data, options.eval_every, options.eval_batch_size, model_config, dtype,
            folders.summary_writer(options.logs, data.evaluation_split), setup.out, on_record,
            cluster.is_chief)
    ckpt = state.checkpoint(recipe)
    manager = tf.train.CheckpointManager(ckpt, options.ckpt_path, max_to_keep=options.max_to_keep)
    save = actions.Save(folders, manager, ckpt, start, last_checkpoint, options.save_every,
                        options.save_every_secs)
    keep_best = (actions.KeepBest(folders, ckpt, options.ckpt_path, setup.out)
                 if evaluate and data.evaluation_split == 'validation' else None)
    return Loop(state.train_steps(recipe, cluster.strategy, setup.jit), iter(batches), log,
                evaluate, save, on_step, keep_best)
