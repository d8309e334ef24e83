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
from v2.training.options import RunOptions
from v2.training.recipe import Recipe
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

    Set up the devices, open the data, take the run folder, restore or start, build the
    loop, run it. on_step(step), if given, is called after every call of the traced step;
    on_record(step, split, metrics) receives every logged window's means ('train') and
    every evaluation ('test' or 'validation') before the checkpoint of that step is
    written, so a caller's record never lags the checkpoints it resumes from (the same
    records go to <log_path>/metrics.csv, v2.training.record). Under multi_worker every
    worker runs this function; only the chief writes into ckpt_path and the logs.
    """
    setup = set_up(model_config, recipe, options, out)       # before any other TF work
    recipe = with_teacher(recipe, model_config, setup.out)
    data = inputs.load_training_data(model_config, recipe, data_path,
                                     evaluate=bool(options.eval_every))
    with RunFolder(setup, options) as folder:                # locked for this run
        saved, model_config = preflight.checkpoint_there(
            options.ckpt_path, model_config, setup.out, may_write=setup.cluster.is_chief)
        if saved:       # a changed split or teacher is refused before anything is built
            recipe.changes_from(saved.training_json)
        with OutOfMemory(setup, model_config, recipe, options, folder, saved) as guard:
            state = restored_state(setup, model_config, recipe, options, mean=data.mean,
                                   saved=saved)
            start = int(state.step.numpy())
            if setup.cluster.multi_worker:
                distribution.check_same_step(setup.cluster, state.step, options.ckpt_path)
            setup.out(first_line(setup, state.model_config, recipe,
                                 parameters=count_parameters(state.model), data=data,
                                 data_path=data_path, where=(
                                     'resuming at step %d from %s' % (start, saved.prefix)
                                     if saved else 'starting at step 0')))
            _say_faster_precision(recipe, setup)
            if start >= recipe.num_iterations:
                setup.out('step %d already reaches num_iterations=%d: nothing to train'
                          % (start, recipe.num_iterations))
                return TrainResult(step=start, checkpoint=saved.prefix if saved else None)
            guard.loop = make_loop(setup=setup, state=state, options=options, data=data,
                                   folders=folder.folders, start=start,
                                   last_checkpoint=saved.prefix if saved else None,
                                   on_step=on_step, on_record=on_record)
            return run_loop(guard.loop, setup, state, options, start)


class RunFolder:
    """The run folder, taken for one run: the chief prepares ckpt_path and the log folder
    and holds ckpt_path's lock (v2.runtime.lock); each other worker locks its own scratch
    folder. `logs_before` are the log folder's paths before this run (None on the others)."""

    def __init__(self, setup, options):
        self.setup, self.options = setup, options
        self.folders = distribution.WorkerFolders(setup.cluster)
        self.lock, self.logs_before = None, None

    def __enter__(self):
        options, out = self.options, self.setup.out
        try:
            if self.setup.cluster.is_chief:
                preflight.prepare_folder(options.ckpt_path, 'ckpt_path')
                self.lock = lock.RunLock(options.ckpt_path, 'ckpt_path', out).acquire()
                self.logs_before = _paths_under(options.logs)
                preflight.prepare_folder(options.logs, 'log_path')
            else:
                self.lock = lock.RunLock(self.folders.scratch, 'scratch', out).acquire()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.lock:
            self.lock.release()
        self.folders.close()


class OutOfMemory:
    """Turns running out of device memory into one line naming the last good checkpoint;
    a run that ends so before its first window leaves the log folder as it was."""

    def __init__(self, setup, model_config, recipe, options, folder, saved):
        self.setup, self.model_config, self.recipe = setup, model_config, recipe
        self.options, self.folder, self.saved = options, folder, saved
        self.loop = None            # set once built: its last save and windows

    def __enter__(self):
        return self

    def __exit__(self, kind, e, traceback):
        if not isinstance(e, memory.OOM):
            return False
        loop, options, recipe = self.loop, self.options, self.recipe
        if self.folder.logs_before is not None and (loop is None or loop.log.means is None):
            for action in (loop.log, loop.evaluate) if loop else ():
                if action is not None:
                    action.writer.close()
            _forget_new_logs(options.logs, self.folder.logs_before)
        evaluating = getattr(e, 'evaluating', False)
        raise memory.out_of_memory(
            e, doing='evaluating' if evaluating else 'training',
            network=self.model_config.describe(),
            batch_size=options.eval_batch_size if evaluating else recipe.batch_size,
            batch_setting='eval_batch_size' if evaluating else 'batch_size',
            precision=recipe.precision, used=self.setup.used, checkpoints=True,
            last_checkpoint=loop.save.last if loop else
            (self.saved.prefix if self.saved else None)) from None


def run_loop(loop, setup, state, options, start) -> TrainResult:
    """Runs the loop to num_iterations or a stop request; a lost worker is one line."""
    cluster, total = setup.cluster, state.recipe.num_iterations
    if cluster.is_chief:
        setup.out('checkpoints: %s   TensorBoard: tensorboard --logdir=%s'
                  % (options.ckpt_path, options.logs))
    try:
        with actions.StopRequests(setup.out) as stop:
            step, stopped_by = loop.run(start, total, options.steps_per_call, stop)
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
    result = TrainResult(step=step, checkpoint=loop.save.last, stopped_by=stopped_by,
                         last_metrics=loop.log.means)
    if result.stopped_by:
        setup.out('stopped at step %d; checkpoint %s; run the same command to resume'
                  % (result.step, result.checkpoint))
    if cluster.distributed:
        setup.out('weights digest %s (the same on every worker of a synchronous run)'
                  % distribution.weights_digest(cluster, state.model.trainable_variables))
    return result


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


def first_line(setup, model_config, recipe, *, parameters, data, data_path, where):
    """What the run computes, where and how: the network, the data, the devices, the precision
    as computed, XLA, the layout optimizer, where batches are prepared, and the step it starts
    from."""
    return ('%s: %s trainable parameters; %s training images in %s, batch %d; %s; %s, XLA %s, '
            'layout optimizer %s, batches prepared on the %s; %s'
            % (model_config.describe(), format(parameters, ','),
               format(int(data.images.shape[0]), ','), data_path,
               recipe.batch_size, setup.cluster.describe(setup.used), setup.dtype.name,
               'on' if setup.jit else 'off', 'on' if setup.layout_optimizer else 'off',
               'host' if setup.on_host else 'device', where))


def _say_faster_precision(recipe, setup):
    hint = precision.faster_hint(recipe.precision, setup.dtype, setup.used)
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
    setup.out(first_line(setup, model_config, recipe,
                         parameters=count_parameters(build(model_config)), data=data,
                         data_path=data_path, where=(
                             'dry run: would resume at step %d from %s' % (saved.step,
                                                                          saved.prefix)
                             if saved else 'dry run: would start at step 0')))
    if changes and saved.training_json:
        setup.out('note: would resume with training settings that differ from the '
                  'checkpoint\'s: %s' % changes)
    _say_faster_precision(recipe, setup)
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


def restored_state(setup, model_config, recipe, options, *, mean, saved) -> TrainState:
    """The run's TrainState, restored from `saved` where there is one, once the folder is
    known to hold the checkpoints it will keep (the chief checks the free space first)."""
    if recipe.deterministic:
        tf.config.experimental.enable_op_determinism()
    state = TrainState.create(model_config, recipe, strategy=setup.cluster.strategy,
                              dtype=setup.dtype, mean=mean)
    if setup.cluster.is_chief:
        best = 1 if recipe.validation_split and options.eval_every else 0
        preflight.check_free_space(options.ckpt_path, state.bytes(), options.max_to_keep + best)
        preflight.remove_partial_saves(options.ckpt_path, setup.out)
    if saved:
        state.restore(saved, setup.out)
    return state


@dataclasses.dataclass(kw_only=True)
class Setup:
    """Where and how a run computes, decided before any data is read."""
    used: list                       # the devices (v2.runtime.devices.Device)
    cluster: distribution.Cluster
    on_host: bool                    # batches prepared by tf.data on the host
    jit: bool                        # the step compiled with XLA
    layout_optimizer: bool           # grappler's layout optimizer on (runtime.devices)
    dtype: tf.DType                  # what the step computes in (v2.runtime.precision)
    out: Callable                    # progress lines (a worker's name its own)

    @property
    def on_gpu(self):
        return devices.on_gpu(self.used)


def set_up(model_config, recipe, options, out) -> Setup:
    """The devices, the strategy, where batches are prepared, XLA and the compute dtype:
    decided first, as TensorFlow requires, and refused in one line where they cannot go
    together."""
    used = devices.setup(options.distribution_strategy, devices=options.devices,
                         tf32=options.tf32, out=out, cpu_devices=options.cpu_devices)
    return set_up_on(used, model_config, recipe, options, out)


def set_up_on(used, model_config, recipe, options, out) -> Setup:
    """set_up() on devices already set up (`used`: v2.tools.gpu_worker's, set up once)."""
    on_gpu = devices.on_gpu(used)
    cluster = distribution.make_cluster(options.distribution_strategy, devices=options.devices,
                                        cpu_devices=options.cpu_devices,
                                        worker_timeout=options.worker_timeout, gpus=on_gpu)
    if not cluster.is_chief:
        def out(line, say=out):
            return say('worker %d: %s' % (cluster.worker_index, line))
    distribution.check_batch(recipe.batch_size, cluster)
    layout = (devices.layout_optimizer_by_default(used) if options.layout_optimizer is None
              else options.layout_optimizer)
    devices.set_layout_optimizer(layout)
    return Setup(used=used, cluster=cluster, layout_optimizer=layout,
                 on_host=inputs.prepares_on_host(options.prepare_batches, on_gpu, cluster),
                 jit=preflight.use_xla(options.jit_compile, recipe, model_config,
                                       cluster.replicas, used, out),
                 dtype=precision.compute_dtype(recipe.precision, used, warn=out), out=out)


def make_loop(*, setup, state, options, data, folders, start, last_checkpoint, on_step,
              on_record) -> Loop:
    """The Loop of a run: its traced steps, its batches and its actions, each action built
    from the run's options."""
    cluster, recipe, model_config = setup.cluster, state.recipe, state.model_config
    if cluster.is_chief:              # the run's CSV and hyper-parameters beside its logs
        on_record = record.both(record.MetricsCsv(options.logs, start), on_record)
        record.write_hyperparameters(options.logs, model_config, recipe, options.ckpt_path)
    batches = distribution.distribute_batches(
        cluster, lambda: inputs.training_batches(data, recipe, start, setup.on_host,
                                                 state.mean.numpy(), model_config.num_classes),
        recipe.batch_size, setup.on_gpu)
    agree = cluster.multi_worker
    log = actions.Log(recipe=recipe, options=options, reader=state.window_reader(agree),
                      writer=folders.summary_writer(options.logs, 'train'), out=setup.out,
                      on_record=on_record, agree=agree)
    evaluate = None
    if data.evaluation is not None and options.eval_every:
        evaluate = actions.Evaluate(
            state=state, data=data, options=options,
            writer=folders.summary_writer(options.logs, data.evaluation_split), out=setup.out,
            on_record=on_record, chief=cluster.is_chief)
    ckpt = state.checkpoint()
    manager = tf.train.CheckpointManager(ckpt, options.ckpt_path, max_to_keep=options.max_to_keep)
    save = actions.Save(folders=folders, manager=manager, ckpt=ckpt, start=start,
                        last=last_checkpoint, options=options)
    keep_best = (actions.KeepBest(folders, ckpt, options.ckpt_path, setup.out)
                 if evaluate and data.evaluation_split == 'validation' else None)
    return Loop(train_steps=state.train_steps(setup.jit), batches=iter(batches), log=log,
                evaluate=evaluate, save=save, on_step=on_step, keep_best=keep_best)
