"""Test-set metrics of a model, for one checkpoint or every checkpoint of a folder.

The set is read in uint8 batches (never as one 10000-image tensor) and one traced
function sums the cross-entropy and the confusion matrix over a whole pass on the
device: one host read per pass. Its batch dimension is free, so the last, smaller
batch and every further checkpoint re-use the same trace. With tta, each image is
also seen flipped and the two views' logits are averaged (the flip is one of the
training augmentations, so the net knows both views).
"""

import dataclasses
import functools
import json
import os

import numpy as np
import tensorflow as tf

from v2.data import cifar, pipeline
from v2.errors import UserError
from v2.nets.model import build
from v2.runtime import checkpoint
from v2.runtime import devices as devices_lib
from v2.runtime import precision as precision_lib
from v2.runtime.ema import WeightAverage


@dataclasses.dataclass
class Metrics:
    """Totals over a whole evaluation set."""
    num_examples: int
    cross_entropy: float
    accuracy: float
    per_class_accuracy: list[float]   # = per-class recall
    per_class_precision: list[float]
    confusion: list[list[int]]      # rows: true class, columns: predicted class

    @property
    def error(self):
        return 1.0 - self.accuracy

    def to_dict(self):
        return dict(dataclasses.asdict(self), error=self.error)

    @classmethod
    def from_confusion(cls, confusion, cross_entropy_sum):
        """The metrics of a confusion matrix (rows: true class) and summed cross-entropy."""
        confusion = np.asarray(confusion, np.int64)
        total = int(confusion.sum())
        recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
        precision = confusion.diagonal() / np.maximum(confusion.sum(axis=0), 1)
        return cls(num_examples=total, cross_entropy=float(cross_entropy_sum) / max(total, 1),
                   accuracy=float(confusion.trace()) / max(total, 1),
                   per_class_accuracy=[float(a) for a in recall],
                   per_class_precision=[float(p) for p in precision],
                   confusion=confusion.tolist())


class Evaluator:
    """Sums cross-entropy and a confusion matrix over a pass with one traced function."""

    def __init__(self, model, pixel_mean, tta=False):
        self.model = model
        self.pixel_mean = pixel_mean
        self.tta = tta
        self.num_classes = model.config.num_classes
        # A partial, not the bound method: TensorFlow counts traces per code object and
        # would warn of "retracing" when many Evaluators (one per training run) trace it.
        self._pass = tf.function(functools.partial(Evaluator._pass_sums, self))

    def logits(self, images):
        """Float32 logits of uint8 images (both views averaged with tta)."""
        x = pipeline.normalize(images, self.pixel_mean)
        logits = self.model(x, training=False)
        if self.tta:
            logits = (logits + self.model(tf.reverse(x, axis=[2]), training=False)) / 2.0
        return logits

    def _pass_sums(self, batches):
        cross_entropy = tf.constant(0.0, tf.float64)
        confusion = tf.zeros([self.num_classes, self.num_classes], tf.int64)
        for images, labels in batches:
            logits = self.logits(images)
            cross_entropy += tf.cast(tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)), tf.float64)
            predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
            confusion += tf.math.confusion_matrix(labels, predictions, self.num_classes,
                                                  dtype=tf.int64)
        return cross_entropy, confusion

    def __call__(self, batches):
        cross_entropy, confusion = self._pass(batches)
        return Metrics.from_confusion(confusion.numpy(), cross_entropy.numpy())

    @property
    def traces(self):
        """How many times the pass function was traced (1 after any number of calls)."""
        return self._pass.experimental_get_tracing_count()


class Restorer:
    """A network of a checkpoint's architecture, and the way to load any such checkpoint into it.

    A checkpoint of a run with weight averaging loads its averages into the net
    (averaged=False: its live weights).
    """

    def __init__(self, saved, precision='float32', out=print, averaged=True):
        self.net = build(saved.config,
                         compute_dtype=precision_lib.compute_dtype(precision, warn=out))
        self.mean = tf.Variable(saved.pixel_mean, trainable=False, name='pixel_mean')
        self.ema = WeightAverage(self.net, 0.0) if saved.has_ema and averaged else None
        self._checkpoint = checkpoint.make(self.net, self.mean, ema=self.ema)

    def load(self, saved):
        checkpoint.restore(self._checkpoint, saved.prefix)
        if self.ema:
            self.ema.copy_to(self.net)
        return self.net


def load_network(ckpt_path: str, wanted: dict | None = None, precision: str = 'float32',
                 out=print, averaged: bool = True, devices: tuple = ()):
    """The network of the checkpoint ckpt_path names, restored; with its Saved metadata.

    It computes on one device: the first GPU, or the one `devices` names."""
    devices_lib.setup_for_evaluation(devices, out)
    saved = checkpoint.Saved(checkpoint.find(ckpt_path))
    saved.check_matches(wanted or {})
    return Restorer(saved, precision, out, averaged).load(saved), saved


def evaluate_checkpoints(ckpt_path: str, data_path: str | None = None,
                         wanted: dict | None = None, all_checkpoints: bool = False,
                         batch_size: int = 500, output_json: str | None = None,
                         out=print, precision: str = 'float32', log_path: str | None = None,
                         tta: bool = False, averaged: bool = True, devices: tuple = ()):
    """Evaluates the checkpoint(s) that ckpt_path names on the test set.

    The architecture comes from the checkpoint; `wanted` (a dict of ModelConfig
    fields the user set explicitly) must match it. data_path None means the
    folder the checkpoint's data set extracts to. With log_path, each checkpoint's
    test cross-entropy and accuracy go to TensorBoard at its step, in the run
    log_path/evaluator beside the trainer's runs. A checkpoint of a run with weight
    averaging is evaluated with its averages (averaged=False: its live weights). It
    computes on one device, the first GPU or the one `devices` names, and takes only the
    memory it needs there, so that it fits beside a running trainer.
    Returns [(prefix, step, Metrics)].
    """
    devices_lib.setup_for_evaluation(devices, out)
    prefixes = checkpoint.find_all(ckpt_path) if all_checkpoints else [checkpoint.find(ckpt_path)]
    saved = [checkpoint.Saved(p) for p in prefixes]
    for s in saved:
        s.check_matches(wanted or {})
    architectures = {s.config for s in saved}
    if len(architectures) > 1:
        raise UserError('ckpt_path=%s holds checkpoints of different architectures (%s); '
                        'evaluate them one at a time'
                        % (ckpt_path, ', '.join(sorted(c.describe() for c in architectures))),
                        settings=('ckpt_path',))
    config = saved[0].config
    spec = cifar.DATASETS[config.dataset]
    images, labels = cifar.load_split(data_path or spec.folder, spec, 'test')
    if output_json:
        _check_writable(output_json)

    writer = (tf.summary.create_file_writer(os.path.join(log_path, 'evaluator'))
              if log_path else None)
    restorer = Restorer(saved[0], precision, out, averaged)
    evaluator = Evaluator(restorer.net, restorer.mean, tta)
    results = []
    for s in saved:
        restorer.load(s)
        metrics = evaluator(pipeline.eval_batches(images, labels, batch_size))
        results.append((s.prefix, s.step, metrics))
        if writer and s.step is not None:
            with writer.as_default(step=s.step):
                tf.summary.scalar('cross_entropy', metrics.cross_entropy)
                tf.summary.scalar('accuracy', metrics.accuracy)
    if writer:
        writer.flush()
        out('TensorBoard: tensorboard --logdir=%s (run "evaluator")' % log_path)

    views = ' with flipped views averaged' if tta else ''
    weights = ', weight averages' if restorer.ema else ''
    out(report(results, config, spec.class_names, views + weights))
    if output_json:
        with open(output_json, 'w') as f:
            json.dump({'model': config.describe(),
                       'architecture': json.loads(config.to_json()),
                       'test_files': list(spec.test_files),
                       'class_names': list(spec.class_names), 'tta': tta,
                       'weight_averages': bool(weights),
                       'checkpoints': [dict(checkpoint=p, step=step, **m.to_dict())
                                       for p, step, m in results]}, f, indent=1)
        out('wrote %s' % output_json)
    return results


def report(results, config, class_names, how=''):
    """The printed report: per-checkpoint table, then per-class accuracy of the last."""
    lines = ['%s on %d test images%s' % (config.describe(), results[-1][2].num_examples, how),
             '%10s %14s %10s %8s  %s' % ('step', 'cross-entropy', 'accuracy', 'error',
                                         'checkpoint')]
    for prefix, step, m in results:
        lines.append('%10s %14.4f %9.2f%% %7.2f%%  %s' % (step, m.cross_entropy,
                                                         100 * m.accuracy, 100 * m.error, prefix))
    last = results[-1][2]
    lines.append('per class (%s):   precision   recall (= accuracy)'
                 % os.path.basename(results[-1][0]))
    lines.extend('  %-14s %9.2f%% %9.2f%%' % (name, 100 * p, 100 * r) for name, p, r in
                 zip(class_names, last.per_class_precision, last.per_class_accuracy))
    if len(class_names) <= 20:          # CIFAR-100's 100x100 matrix is in the JSON only
        width = max(5, len(str(max(max(row) for row in last.confusion))) + 1)
        lines.append('confusion matrix (rows: true class, columns: predicted class):')
        lines.append(' ' * 14 + ''.join('%*s' % (width, name[:width - 1]) for name in class_names))
        lines.extend('  %-12s' % name + ''.join('%*d' % (width, n) for n in row)
                     for name, row in zip(class_names, last.confusion))
    return '\n'.join(lines)


def _check_writable(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError('output_json=%s: the folder %s does not exist' % (path, folder),
                        settings=('output_json',))
