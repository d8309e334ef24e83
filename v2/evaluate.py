"""Test-set metrics of a model, for one checkpoint or every checkpoint of a folder.

The set is read in batches (never as one 10000-image tensor) through one traced
function whose batch dimension is free, so the last, smaller batch and every
further checkpoint re-use the same trace.
"""

import dataclasses
import functools
import json
import os
from typing import List

import numpy as np
import tensorflow as tf

from v2 import checkpoint, data, precision as precision_lib
from v2.errors import UserError
from v2.model import build


@dataclasses.dataclass
class Metrics:
    """Totals over a whole evaluation set."""
    num_examples: int
    cross_entropy: float
    accuracy: float
    per_class_accuracy: List[float]   # = per-class recall
    per_class_precision: List[float]
    confusion: List[List[int]]      # rows: true class, columns: predicted class

    @property
    def error(self):
        return 1.0 - self.accuracy

    def to_dict(self):
        return dict(dataclasses.asdict(self), error=self.error)


class Evaluator:
    """Sums cross-entropy and a confusion matrix over batches with one traced function."""

    def __init__(self, model):
        self.model = model
        self.num_classes = model.config.num_classes
        # A partial, not the bound method: TensorFlow counts traces per code object and
        # would warn of "retracing" when many Evaluators (one per training run) trace it.
        self._sums = tf.function(functools.partial(Evaluator._batch_sums, self),
                                 input_signature=[
                                     tf.TensorSpec([None, data.IMAGE_SIZE, data.IMAGE_SIZE,
                                                    data.CHANNELS], tf.float32),
                                     tf.TensorSpec([None], tf.int32)])

    def _batch_sums(self, images, labels):
        logits = self.model(images, training=False)
        cross_entropy = tf.reduce_sum(
            tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
        confusion = tf.math.confusion_matrix(labels, predictions, self.num_classes,
                                             dtype=tf.int64)
        return tf.cast(cross_entropy, tf.float64), confusion

    def __call__(self, batches):
        cross_entropy = 0.0
        confusion = np.zeros([self.num_classes, self.num_classes], np.int64)
        for images, labels in batches:
            batch_ce, batch_confusion = self._sums(images, labels)
            cross_entropy += float(batch_ce)
            confusion += batch_confusion.numpy()
        total = int(confusion.sum())
        recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
        precision = confusion.diagonal() / np.maximum(confusion.sum(axis=0), 1)
        return Metrics(num_examples=total,
                       cross_entropy=cross_entropy / max(total, 1),
                       accuracy=float(confusion.trace()) / max(total, 1),
                       per_class_accuracy=[float(a) for a in recall],
                       per_class_precision=[float(p) for p in precision],
                       confusion=confusion.tolist())

    @property
    def traces(self):
        """How many times the batch function was traced (1 after any number of calls)."""
        return self._sums.experimental_get_tracing_count()


def load_network(ckpt_path, wanted=None, precision='float32', out=print):
    """The network of the checkpoint --ckpt_path names, restored; with its Saved metadata."""
    saved = checkpoint.Saved(checkpoint.find(ckpt_path))
    saved.check_matches(wanted or {})
    net = build(saved.config, compute_dtype=precision_lib.compute_dtype(precision, warn=out))
    checkpoint.restore(checkpoint.make(net, tf.Variable(saved.pixel_mean, trainable=False)),
                       saved.prefix)
    return net, saved


def evaluate_checkpoints(ckpt_path, data_path=None, wanted=None, all_checkpoints=False,
                         batch_size=500, output_json=None, out=print, precision='float32',
                         log_path=None):
    """Evaluates the checkpoint(s) that ckpt_path names on the test set.

    The architecture comes from the checkpoint; `wanted` (a dict of ModelConfig
    fields the user set explicitly) must match it. data_path None means the
    folder the checkpoint's data set extracts to. With log_path, each checkpoint's
    test cross-entropy and accuracy go to TensorBoard at its step, in the run
    log_path/evaluator beside the trainer's train/ and eval/ runs.
    Returns [(prefix, step, Metrics)].
    """
    prefixes = checkpoint.find_all(ckpt_path) if all_checkpoints else [checkpoint.find(ckpt_path)]
    saved = [checkpoint.Saved(p) for p in prefixes]
    for s in saved:
        s.check_matches(wanted or {})
    architectures = {s.config for s in saved}
    if len(architectures) > 1:
        raise UserError('--ckpt_path=%s holds checkpoints of different architectures (%s); '
                        'evaluate them one at a time'
                        % (ckpt_path, ', '.join(sorted(c.describe() for c in architectures))))
    config = saved[0].config
    spec = data.DATASETS[config.dataset]
    images, labels = data.load_split(data_path or spec.folder, spec, 'test')
    if output_json:
        _check_writable(output_json)

    model = build(config, compute_dtype=precision_lib.compute_dtype(precision, warn=out))
    mean = tf.Variable(saved[0].pixel_mean, trainable=False)
    ckpt = checkpoint.make(model, mean)
    evaluator = Evaluator(model)
    writer = (tf.summary.create_file_writer(os.path.join(log_path, 'evaluator'))
              if log_path else None)
    results = []
    for s in saved:
        checkpoint.restore(ckpt, s.prefix)
        metrics = evaluator(data.eval_batches(images, labels, mean.numpy(), batch_size))
        results.append((s.prefix, s.step, metrics))
        if writer and s.step is not None:
            with writer.as_default(step=s.step):
                tf.summary.scalar('cross_entropy', metrics.cross_entropy)
                tf.summary.scalar('accuracy', metrics.accuracy)
    if writer:
        writer.flush()
        out('TensorBoard: tensorboard --logdir=%s (run "evaluator")' % log_path)

    out(report(results, config, spec.class_names))
    if output_json:
        with open(output_json, 'w') as f:
            json.dump({'model': config.describe(),
                       'architecture': json.loads(config.to_json()),
                       'test_files': list(spec.test_files),
                       'class_names': list(spec.class_names),
                       'checkpoints': [dict(checkpoint=p, step=step, **m.to_dict())
                                       for p, step, m in results]}, f, indent=1)
        out('wrote %s' % output_json)
    return results


def report(results, config, class_names):
    """The printed report: per-checkpoint table, then per-class accuracy of the last."""
    lines = ['%s on %d test images' % (config.describe(), results[-1][2].num_examples),
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
        raise UserError('--output_json=%s: the folder %s does not exist' % (path, folder))
