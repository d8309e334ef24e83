"""Test-set metrics of a model, for one checkpoint or every checkpoint of a folder.

The set is read in uint8 batches (never as one 10000-image tensor) and one traced
function sums the cross-entropy and the confusion matrix over a whole pass on the
device, and keeps the pass's logits for the calibration figures (v2.evaluation.
calibration): one host read per pass. Its batch dimension is free, so the last, smaller
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
from v2.evaluation.calibration import Calibration, at_bound, fit_temperature
from v2.nets.model import build
from v2.runtime import checkpoint, memory
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
    calibration: Calibration | None = None
    logits: np.ndarray | None = dataclasses.field(default=None, repr=False)  # [N, K] float32
    labels: np.ndarray | None = dataclasses.field(default=None, repr=False)  # [N] int32

    @property
    def error(self):
        return 1.0 - self.accuracy

    def to_dict(self):
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ('logits', 'labels', 'calibration')}
        if self.calibration:
            fields['calibration'] = self.calibration.to_dict()
        return dict(fields, error=self.error)

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
    """Sums cross-entropy and a confusion matrix over a pass with one traced function;
    with keep_logits, also returns the pass's logits and the calibration figures."""

    def __init__(self, model, pixel_mean, tta=False, keep_logits=False):
        self.model = model
        self.pixel_mean = pixel_mean
        self.tta = tta
        self.keep_logits = keep_logits
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
        kept = tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False,
                              element_shape=[None, self.num_classes])
        kept_labels = tf.TensorArray(tf.int32, size=0, dynamic_size=True, infer_shape=False,
                                     element_shape=[None])
        for images, labels in batches:
            logits = self.logits(images)
            cross_entropy += tf.cast(tf.reduce_sum(
                tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)), tf.float64)
            predictions = tf.argmax(logits, axis=-1, output_type=tf.int32)
            confusion += tf.math.confusion_matrix(labels, predictions, self.num_classes,
                                                  dtype=tf.int64)
            if self.keep_logits:
                kept = kept.write(kept.size(), tf.cast(logits, tf.float32))
                kept_labels = kept_labels.write(kept_labels.size(), labels)
        if not self.keep_logits:
            return cross_entropy, confusion
        return cross_entropy, confusion, kept.concat(), kept_labels.concat()

    def __call__(self, batches):
        cross_entropy, confusion, *kept = self._pass(batches)
        metrics = Metrics.from_confusion(confusion.numpy(), cross_entropy.numpy())
        if kept:
            metrics.logits, metrics.labels = kept[0].numpy(), kept[1].numpy()
            metrics.calibration = Calibration.of(metrics.logits, metrics.labels)
        return metrics

    @property
    def traces(self):
        """How many times the pass function was traced (1 after any number of calls)."""
        return self._pass.experimental_get_tracing_count()


class Restorer:
    """A network of a checkpoint's architecture, and the way to load any such checkpoint into it.

    A checkpoint of a run with weight averaging loads its averages into the net
    (averaged=False: its live weights).
    """

    def __init__(self, saved, precision='float32', out=print, averaged=True, compute_dtype=None):
        self.net = build(saved.config, compute_dtype=compute_dtype
                         or precision_lib.compute_dtype(precision, warn=out))
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


@dataclasses.dataclass
class Result:
    """One checkpoint's figures on the test set.

    which: 'last' (a run folder's latest checkpoint), 'best' (the one its validation
    images chose during training, v2.training.actions.KeepBest) or '' (any other).
    scaled: the calibration after temperature scaling fitted on the validation images.
    """
    prefix: str
    step: int | None
    metrics: Metrics
    which: str = ''
    validation_accuracy: float | None = None     # of a 'best' checkpoint, when it was chosen
    scaled: Calibration | None = None
    validation_images: int = 0                   # those the temperature was fitted on

    def to_dict(self):
        row = dict(checkpoint=self.prefix, step=self.step, which=self.which,
                   **self.metrics.to_dict())
        if self.validation_accuracy is not None:
            row['validation_accuracy'] = self.validation_accuracy
        if self.scaled:
            row['temperature_scaled'] = dict(self.scaled.to_dict(),
                                             validation_images=self.validation_images)
        return row


def checkpoints_named(ckpt_path, all_checkpoints=False):
    """[(prefix, which, best record or None)]: what --ckpt_path names, labelled.

    A run folder gives its latest checkpoint ('last'; every rolling one with
    all_checkpoints), then, where its validation images kept one, its best ('best').
    """
    prefixes = checkpoint.find_all(ckpt_path) if all_checkpoints else [checkpoint.find(ckpt_path)]
    folder = os.path.isdir(ckpt_path) and not checkpoint.is_prefix(ckpt_path)
    named = [(p, 'last' if folder and i == len(prefixes) - 1 else '', None)
             for i, p in enumerate(prefixes)]
    best = checkpoint.find_best(ckpt_path)
    if best:
        named.append((best[0], 'best', best[1]))
    return named


def readable(named, skip_unreadable, out=print):
    """(named, their checkpoint.Saved) with, where skip_unreadable, each checkpoint whose
    metadata does not read reported in one line and left out (the evaluator only reads:
    it sets nothing aside); UserError where none is left, or for the first bad one."""
    kept, saved, errors = [], [], []
    for entry in named:
        try:
            saved.append(checkpoint.Saved(entry[0]))
            kept.append(entry)
        except UserError as e:
            if not skip_unreadable:
                raise
            errors.append(e)
            out('skipped %s' % e)
    if not saved:
        raise errors[0]
    return kept, saved


def validation_images(saved, data_path, spec):
    """The images the checkpoint's run held out (the last validation_split training
    images), for temperature scaling; refused in one line when it held out none."""
    held = json.loads(saved.training_json).get('validation_split', 0) if saved.training_json else 0
    if not held:
        raise UserError('temperature_scaling: %s comes from a run that held out no validation '
                        'images; the temperature is fitted on them, never on the test set '
                        '(train with --validation_split=N)' % saved.prefix,
                        settings=('temperature_scaling',))
    images, labels = cifar.load_split(data_path, spec, 'train')
    return cifar.hold_out(images, labels, held, data_path)[1]


def evaluate_checkpoints(ckpt_path: str, data_path: str | None = None,
                         wanted: dict | None = None, all_checkpoints: bool = False,
                         batch_size: int = 500, output_json: str | None = None,
                         out=print, precision: str = 'float32', log_path: str | None = None,
                         tta: bool = False, averaged: bool = True, devices: tuple = (),
                         temperature_scaling: bool = False) -> list[Result]:
    """Evaluates the checkpoint(s) that ckpt_path names on the test set.

    A run folder gives its last checkpoint and, where its validation images chose one
    during training, its best, each labelled (all_checkpoints: every rolling one too).
    The architecture comes from the checkpoint; `wanted` (a dict of ModelConfig
    fields the user set explicitly) must match it. data_path None means the
    folder the checkpoint's data set extracts to. Every checkpoint gets its accuracy,
    cross-entropy and calibration figures (ECE, NLL, Brier); with temperature_scaling,
    also those after a temperature fitted on the run's own validation images. With
    log_path, each checkpoint's test cross-entropy and accuracy go to TensorBoard at
    its step, in the run log_path/evaluator beside the trainer's runs. A checkpoint
    of a run with weight averaging is evaluated with its averages (averaged=False: its
    live weights). It computes on one device, the first GPU or the one `devices` names,
    and takes only the memory it needs there, so that it fits beside a running trainer.
    """
    used = devices_lib.setup_for_evaluation(devices, out)
    named, saved = readable(checkpoints_named(ckpt_path, all_checkpoints), all_checkpoints, out)
    for s in saved:
        s.check_matches(wanted or {})
    architectures = {s.config for s in saved}
    if len(architectures) > 1:
        raise UserError('ckpt_path=%s holds checkpoints of different architectures (%s); '
                        'evaluate them one at a time'
                        % (ckpt_path, ', '.join(sorted(c.describe() for c in architectures))),
                        settings=('ckpt_path',))
    config = saved[0].config
    spec = cifar.spec_of(config.dataset, data_path, config.num_classes)
    data_path = data_path or spec.folder
    images, labels = cifar.load_split(data_path, spec, 'test')
    held_out = validation_images(saved[-1], data_path, spec) if temperature_scaling else None
    if output_json:
        check_writable(output_json, 'output_json')

    writer = None
    try:
        restorer = Restorer(saved[0], precision, out, averaged)
        evaluator = Evaluator(restorer.net, restorer.mean, tta, keep_logits=True)
        results = []
        for s, (_, which, record) in zip(saved, named):
            try:
                restorer.load(s)
            except UserError as e:
                if not all_checkpoints:
                    raise
                out('skipped %s' % e)       # a data file damaged past its metadata
                continue
            result = Result(s.prefix, s.step, evaluator(pipeline.eval_batches(images, labels,
                                                                              batch_size)),
                            which, record['validation_accuracy'] if record else None)
            if held_out is not None:
                validation = evaluator(pipeline.eval_batches(*held_out, batch_size))
                temperature = fit_temperature(validation.logits, validation.labels)
                result.scaled = Calibration.of(result.metrics.logits, result.metrics.labels,
                                               temperature)
                result.validation_images = len(validation.labels)
            results.append(result)
            if log_path and s.step is not None and which != 'best':
                writer = writer or tf.summary.create_file_writer(os.path.join(log_path,
                                                                              'evaluator'))
                with writer.as_default(step=s.step):
                    tf.summary.scalar('cross_entropy', result.metrics.cross_entropy)
                    tf.summary.scalar('accuracy', result.metrics.accuracy)
    except memory.OOM as e:
        raise memory.out_of_memory(e, doing='evaluating', network=config.describe(),
                                   batch_size=batch_size, precision=precision, used=used,
                                   batch_setting='eval_batch_size',
                                   more_devices=False) from None
    if not results:
        raise UserError('ckpt_path=%s: none of its checkpoints reads' % ckpt_path,
                        settings=('ckpt_path',))
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
                       'checkpoints': [r.to_dict() for r in results]}, f, indent=1)
        out('wrote %s' % output_json)
    return results


def report(results, config, class_names, how=''):
    """The printed report: per-checkpoint table with calibration (and after temperature
    scaling), then per-class accuracy of the last checkpoint (the first of a last/best pair)."""
    lines = ['%s on %d test images%s' % (config.describe(), results[-1].metrics.num_examples, how),
             '%4s %8s %14s %10s %8s %8s %7s  %s' % ('', 'step', 'cross-entropy', 'accuracy',
                                                  'error', 'ECE', 'Brier', 'checkpoint')]
    for r in results:
        m, c = r.metrics, r.metrics.calibration
        lines.append('%4s %8s %14.4f %9.2f%% %7.2f%% %7.2f%% %7.4f  %s'
                     % (r.which, r.step, m.cross_entropy, 100 * m.accuracy, 100 * m.error,
                        100 * c.ece, c.brier, r.prefix))
    lines.append('ECE: %d equal-width confidence bins; cross-entropy = NLL; Brier: summed over '
                 'the classes (0-2)' % len(results[-1].metrics.calibration.bin_count))
    best = [r for r in results if r.which == 'best']
    if best:
        lines.append('best: the checkpoint of the highest validation accuracy during training '
                     '(%.2f%% at step %s); both figures are on the test set'
                     % (100 * best[0].validation_accuracy, best[0].step))
    if results[-1].scaled:
        lines.append('temperature scaling, fitted on the %d validation images:'
                     % results[-1].validation_images)
        lines.append('%4s %8s %12s %16s %18s %16s' % ('', 'step', 'temperature', 'NLL before/after',
                                                     'ECE before/after', 'Brier before/after'))
        for r in results:
            c, t = r.metrics.calibration, r.scaled
            lines.append('%4s %8s %12.3f %7.4f/%-8.4f %8.2f%%/%-8s %7.4f/%-8.4f%s'
                         % (r.which, r.step, t.temperature, c.nll, t.nll, 100 * c.ece,
                            '%.2f%%' % (100 * t.ece), c.brier, t.brier,
                            '  (the search\'s bound)' if at_bound(t.temperature) else ''))
    shown = next((r for r in results if r.which == 'last'), results[-1])
    last = shown.metrics
    lines.append('per class (%s):   precision   recall (= accuracy)'
                 % os.path.basename(shown.prefix))
    lines.extend('  %-14s %9.2f%% %9.2f%%' % (name, 100 * p, 100 * r) for name, p, r in
                 zip(class_names, last.per_class_precision, last.per_class_accuracy))
    if len(class_names) <= 20:          # CIFAR-100's 100x100 matrix is in the JSON only
        width = max(5, len(str(max(max(row) for row in last.confusion))) + 1)
        lines.append('confusion matrix (rows: true class, columns: predicted class):')
        lines.append(' ' * 14 + ''.join('%*s' % (width, name[:width - 1]) for name in class_names))
        lines.extend('  %-12s' % name + ''.join('%*d' % (width, n) for n in row)
                     for name, row in zip(class_names, last.confusion))
    return '\n'.join(lines)


def check_writable(path, flag):
    """Refuses a file to be written into a folder that does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError('%s=%s: the folder %s does not exist' % (flag, path, folder),
                        settings=(flag,))
