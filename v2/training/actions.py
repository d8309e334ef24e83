"""What the loop does between calls of the traced step, each an action with due(step).

  Log       at every logging step: the window's sums read from the device once (by
            name), checked for non-finite steps, printed, summarised and recorded.
  Evaluate  every eval_every steps: the held-out or test images, summarised, recorded.
  Save      at a logging step at least save_every steps (or seconds) after the last
            save, at the end, and on a stop request.
  KeepBest  with a validation split: after an evaluation that beats every earlier one,
            the checkpoint kept apart in <ckpt_path>/best.
  StopRequests  the first SIGINT/SIGTERM becomes a request to save and stop.

Records (on_record) always come before the checkpoint of their step is written, so a
caller's record never lags the checkpoints it resumes from.
"""

import math
import os
import signal
import time

import tensorflow as tf

from v2.data import pipeline
from v2.errors import UserError
from v2.evaluation.evaluate import Evaluator
from v2.nets.model import build
from v2.runtime import checkpoint, distribution, memory
from v2.training.nonfinite import NonFinitePolicy
from v2.training.step import METRICS


def format_duration(seconds):
    seconds = int(seconds)
    if seconds >= 3600:
        return '%dh%02dm' % (seconds // 3600, seconds % 3600 // 60)
    return '%dm%02ds' % (seconds // 60, seconds % 60)


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


class Log:
    """The end of a logging window. Under multi_worker (`agree`) a stop request waits for
    the next logging step, where the workers agree on it; otherwise it ends the window at
    once. The rate printed is the one the window's last step applied."""

    def __init__(self, *, recipe, options, reader, writer, out, on_record=None, agree=False):
        self.recipe, self.every = recipe, options.log_per_iterations
        self.reader, self.writer = reader, writer
        self.out, self.on_record, self.agree = out, on_record, agree
        self.steps, self.started, self.means = 0, time.perf_counter(), None

    def due(self, step, last, stop_requested):
        return step % self.every == 0 or last or (stop_requested and not self.agree)

    def count(self, steps):
        self.steps += steps

    def __call__(self, step, stop, save):
        """Reads, checks and reports the window; returns it ({name: value}, 'stop' and
        'save' as the workers agreed)."""
        window = self.reader(stop, save)
        NonFinitePolicy.check(window, step, self.steps)
        updated = window['updated']
        means = {name: window[name] / updated if updated else math.nan for name in METRICS}
        with tf.device('/cpu:0'):                   # no work for the accelerator's queue
            means['learning_rate'] = float(self.recipe.schedule(step - 1))
        means['skipped_steps'] = int(window['skipped'])
        if 'loss_scale' in window:
            means['loss_scale'] = window['loss_scale']
        rate = self.steps * self.recipe.batch_size / (time.perf_counter() - self.started)
        means['images_per_second'] = rate
        with self.writer.as_default(step=step):
            for name, value in means.items():
                tf.summary.scalar(name, value)
        total = self.recipe.num_iterations
        # Of mixed images (mixup, CutMix): the accuracy on the label of the larger share.
        self.out('step %d/%d  loss %.4f  %s %.3f  lr %.6g  %.0f img/s  left %s%s'
                 % (step, total, means['loss'], 'accuracy on the larger label'
                    if self.recipe.mixing else 'accuracy', means['accuracy'],
                    means['learning_rate'],
                    rate, format_duration((total - step) * self.recipe.batch_size / rate),
                    '  skipped %d non-finite steps' % means['skipped_steps']
                    if means['skipped_steps'] else ''))
        self.means = means
        if self.on_record:
            self.on_record(step, 'train', means)
        return window

    def restart_clock(self):
        """The next window's time starts now: after this one's evaluation and save."""
        self.steps, self.started = 0, time.perf_counter()


class Evaluate:
    """Evaluates the live (or, with weight averaging, the averaged) net every `every` steps.

    It evaluates a copy built outside the strategy, given the weights (and the batch-
    norm statistics, averaged over the replicas) once per evaluation: the training net
    under a strategy would reduce its statistics over the replicas at every batch. Every
    worker evaluates (reading the averaged statistics is a collective); the chief prints.
    """

    def __init__(self, *, state, data, options, writer, out, on_record=None, chief=True):
        self.state, self.every = state, options.eval_every
        self.batch_size = options.eval_batch_size
        self.images, self.labels = data.evaluation
        self.split, self.writer, self.out = data.evaluation_split, writer, out
        self.on_record, self.chief = on_record, chief
        self.net = build(state.model_config, compute_dtype=state.dtype)
        self.evaluator = Evaluator(self.net, tf.Variable(state.mean.read_value(),
                                                         trainable=False))

    def due(self, step, last):
        return step % self.every == 0 or last

    def __call__(self, step):
        sources = self.state.ema.averages if self.state.ema else self.state.model.variables
        for target, source in zip(self.net.variables, sources):
            target.assign(source.read_value())
        try:
            metrics = self.evaluator(pipeline.eval_batches(self.images, self.labels,
                                                           self.batch_size))
        except memory.OOM as e:
            memory.mark_evaluating(e)
            raise
        with self.writer.as_default(step=step):
            tf.summary.scalar('cross_entropy', metrics.cross_entropy)
            tf.summary.scalar('accuracy', metrics.accuracy)
        if self.chief:
            self.out('step %d: %s cross-entropy %.4f  accuracy %.2f%%'
                     % (step, self.split, metrics.cross_entropy, 100 * metrics.accuracy))
        if self.on_record:
            self.on_record(step, self.split, {'cross_entropy': metrics.cross_entropy,
                                              'accuracy': metrics.accuracy})
        return metrics


class Save:
    """Writes checkpoints (WorkerFolders.save); `last` is the last one written or restored."""

    def __init__(self, *, folders, manager, ckpt, start, last, options):
        self.folders, self.manager, self.ckpt = folders, manager, ckpt
        self.every, self.every_secs = options.save_every, options.save_every_secs
        self.last, self.last_step, self.last_time = last, start, time.monotonic()

    def due(self, step, last):
        return (step - self.last_step >= self.every or last or
                (self.every_secs and time.monotonic() - self.last_time >= self.every_secs))

    def __call__(self, step):
        """Saves; a failure (a full disk, a folder gone) is one line naming the last good one."""
        try:
            self.last = self.folders.save(self.manager, self.ckpt, step)
        except (OSError, tf.errors.OpError) as e:
            if (distribution.is_peer_loss(e)
                    and self.folders.cluster.multi_worker):
                raise                   # a lost worker, not a disk problem: train() reports it
            raise UserError('could not save the checkpoint of step %d in %s (%s); the last good '
                            'checkpoint is %s' % (step, self.manager.directory,
                                                  getattr(e, 'strerror', None) or
                                                  str(e).strip().splitlines()[0],
                                                  self.last)) from None
        self.last_step, self.last_time = step, time.monotonic()


class KeepBest:
    """Keeps the checkpoint of the best validation accuracy apart from the rolling ones.

    Only the held-out validation images choose it, never the test set: the papers report
    the last network, and a checkpoint chosen on the test set would report an optimistic
    error. It lives in <ckpt_path>/best (one checkpoint, which max_to_keep never removes),
    with best.json naming its step and accuracy, so a resumed run keeps competing against
    it. Only a strictly better accuracy replaces it: a tie keeps the earlier step.
    """

    def __init__(self, folders, ckpt, ckpt_path, out):
        self.folders, self.ckpt, self.ckpt_path, self.out = folders, ckpt, ckpt_path, out
        self.manager = tf.train.CheckpointManager(
            ckpt, os.path.join(ckpt_path, checkpoint.BEST_FOLDER), max_to_keep=1)
        record = checkpoint.read_best(ckpt_path)      # every worker: they must agree
        self.accuracy = record['validation_accuracy'] if record else -1.0

    def __call__(self, step, accuracy):
        if accuracy <= self.accuracy:
            return
        try:
            prefix = self.folders.save(self.manager, self.ckpt, step)
            if self.folders.cluster.is_chief:
                checkpoint.write_best(self.ckpt_path, prefix, step, accuracy)
        except OSError as e:
            raise UserError('could not keep the best checkpoint of step %d in %s (%s)'
                            % (step, self.manager.directory, e.strerror or e)) from None
        self.accuracy = accuracy
        self.out('step %d: the best validation accuracy so far, kept as %s' % (step, prefix))
