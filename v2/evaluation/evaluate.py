"""Test-set metrics of a model, for one checkpoint or every checkpoint of a folder.

The set is read in uint8 batches (never as one 10000-image tensor) and one traced
function sums the cross-entropy and the confusion matrix over a whole pass on the
device, and keeps the pass's logits for the calibration figures (v2.evaluation.
calibration): one host read per pass. Its batch dimension is free, so the last, smaller
batch and every further checkpoint re-use the same trace. With tta, each image is
also seen flipped and the two views' logits are averaged (the flip is one of the
training augmentations, so the net knows both views).

evaluate_checkpoints returns the figures (an Evaluation: each checkpoint's Result)
and prints nothing but notes; the evaluator program prints the report and writes the
JSON and the TensorBoard summaries (v2.cli.evaluator). It is prepare(), which reads
and checks everything before any computing, then evaluate_prepared().
"""

import dataclasses
import functools
import json
import os

import numpy as np
import tensorflow as tf

from v2.data import cifar, pipeline
from v2.errors import UserError
from v2.evaluation.calibration import Calibration, fit_temperature
from v2.nets.model import ModelConfig, build
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

    def __init__(self, model, pixel_mean, *, tta=False, keep_logits=False):
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

    def __init__(self, saved, *, precision='float32', out=print, averaged=True,
                 compute_dtype=None):
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


def load_network(ckpt_path: str, wanted: dict | None = None, *, precision: str = 'float32',
                 out=print, averaged: bool = True, devices: tuple = ()):
    """The network of the checkpoint ckpt_path names, restored; with its Saved metadata.

    It computes on one device: the first GPU, or the one `devices` names."""
    devices_lib.setup_for_evaluation(devices, out)
    saved = checkpoint.Saved(checkpoint.find(ckpt_path))
    saved.check_matches(wanted or {})
    return Restorer(saved, precision=precision, out=out, averaged=averaged).load(saved), saved


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


def checkpoints_named(ckpt_path, *, all_checkpoints=False):
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


def readable(named, *, skip_unreadable, out=print):
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """How evaluate_checkpoints evaluates the checkpoints a path names.

    data_path None: the folder the checkpoints' data set extracts to. wanted: the
    ModelConfig fields a user set explicitly, which the checkpoints must match.
    all_checkpoints: every rolling checkpoint of a run folder too (one that does not read
    is skipped with a line). averaged=False: a run with weight averages is evaluated with
    its live weights. devices: the one device to compute on (default: the first GPU).
    temperature_scaling: also the calibration after a temperature fitted on the run's
    own validation images.
    """
    data_path: str | None = None
    wanted: dict = dataclasses.field(default_factory=dict)
    all_checkpoints: bool = False
    batch_size: int = 500
    precision: str = 'float32'
    tta: bool = False
    averaged: bool = True
    devices: tuple = ()
    temperature_scaling: bool = False


@dataclasses.dataclass
class Evaluation:
    """What evaluate_checkpoints found: each checkpoint's Result, in the order they were
    named (the rolling ones, the last, then the best), and what they were evaluated as."""
    results: list[Result]
    config: ModelConfig
    spec: cifar.DatasetSpec          # the data set's class names and test files
    tta: bool = False
    weight_averages: bool = False    # the nets were the runs' weight averages


def final(results):
    """The result a run is judged by: its last checkpoint (never the best on validation),
    or the last one evaluated where a prefix, not a run folder, was named."""
    return next((r for r in results if r.which == 'last'), results[-1])


@dataclasses.dataclass(kw_only=True)
class Prepared:
    """The checkpoints a path names, read and checked, and the images to evaluate them on:
    everything evaluate_prepared needs, found before anything is computed."""
    ckpt_path: str
    options: EvalOptions
    named: list                      # [(prefix, which, best record or None)]
    saved: list                      # their checkpoint.Saved
    spec: cifar.DatasetSpec
    test_set: tuple                  # (images, labels)
    held_out: tuple | None           # the validation (images, labels) to fit a temperature on
    used: list                       # the device, for an out-of-memory message

    @property
    def config(self):
        return self.saved[0].config


def prepare(ckpt_path: str, options: EvalOptions = EvalOptions(), *, out=print) -> Prepared:
    """Finds, reads and checks the checkpoints ckpt_path names (see checkpoints_named), and
    loads the test images (and the validation images, with temperature_scaling)."""
    used = devices_lib.setup_for_evaluation(options.devices, out)
    named, saved = readable(checkpoints_named(ckpt_path, all_checkpoints=options.all_checkpoints),
                            skip_unreadable=options.all_checkpoints, out=out)
    for s in saved:
        s.check_matches(options.wanted or {})
    architectures = {s.config for s in saved}
    if len(architectures) > 1:
        raise UserError('ckpt_path=%s holds checkpoints of different architectures (%s); '
                        'evaluate them one at a time'
                        % (ckpt_path, ', '.join(sorted(c.describe() for c in architectures))),
                        settings=('ckpt_path',))
    config = saved[0].config
    spec = cifar.spec_of(config.dataset, options.data_path, config.num_classes)
    data_path = options.data_path or spec.folder
    test_set = cifar.load_split(data_path, spec, 'test')
    held_out = (validation_images(saved[-1], data_path, spec) if options.temperature_scaling
                else None)
    return Prepared(ckpt_path=ckpt_path, options=options, named=named, saved=saved, spec=spec,
                    test_set=test_set, held_out=held_out, used=used)


def evaluate_prepared(prepared: Prepared, *, out=print) -> Evaluation:
    """Evaluates each prepared checkpoint on the test set, with one net and one traced pass
    for all; with all_checkpoints, one whose weights do not read is skipped with a line."""
    p, options = prepared, prepared.options
    try:
        restorer = Restorer(p.saved[0], precision=options.precision, out=out,
                            averaged=options.averaged)
        evaluator = Evaluator(restorer.net, restorer.mean, tta=options.tta, keep_logits=True)
        results = []
        for s, (_, which, record) in zip(p.saved, p.named):
            try:
                restorer.load(s)
            except UserError as e:
                if not options.all_checkpoints:
                    raise
                out('skipped %s' % e)       # a data file damaged past its metadata
                continue
            results.append(_result(evaluator, s, p, which=which, record=record))
    except memory.OOM as e:
        raise memory.out_of_memory(e, doing='evaluating', network=p.config.describe(),
                                   batch_size=options.batch_size, precision=options.precision,
                                   used=p.used, batch_setting='eval_batch_size',
                                   more_devices=False) from None
    if not results:
        raise UserError('ckpt_path=%s: none of its checkpoints reads' % p.ckpt_path,
                        settings=('ckpt_path',))
    return Evaluation(results, p.config, p.spec, tta=options.tta,
                      weight_averages=bool(restorer.ema))


def _result(evaluator, saved, prepared, *, which, record):
    """The Result of the checkpoint loaded into the evaluator's net."""
    batch_size = prepared.options.batch_size
    result = Result(saved.prefix, saved.step,
                    evaluator(pipeline.eval_batches(*prepared.test_set, batch_size)),
                    which, record['validation_accuracy'] if record else None)
    if prepared.held_out is not None:
        validation = evaluator(pipeline.eval_batches(*prepared.held_out, batch_size))
        temperature = fit_temperature(validation.logits, validation.labels)
        result.scaled = Calibration.of(result.metrics.logits, result.metrics.labels,
                                       temperature)
        result.validation_images = len(validation.labels)
    return result


def evaluate_checkpoints(ckpt_path: str, options: EvalOptions = EvalOptions(), *,
                         out=print) -> Evaluation:
    """Evaluates the checkpoint(s) that ckpt_path names on the test set.

    A run folder gives its last checkpoint and, where its validation images chose one
    during training, its best, each labelled (all_checkpoints: every rolling one too).
    The architecture comes from the checkpoint; options.wanted must match it. Every
    checkpoint gets its accuracy, cross-entropy and calibration figures (ECE, NLL,
    Brier); with temperature_scaling, also those after a temperature fitted on the run's
    own validation images. A checkpoint of a run with weight averaging is evaluated with
    its averages (averaged=False: its live weights). It computes on one device, the
    first GPU or the one options.devices names, and takes only the memory it needs
    there, so that it fits beside a running trainer. It prints nothing but notes on the
    devices and the checkpoints it skips (`out`); the evaluator program prints the
    report, writes the JSON and the TensorBoard summaries (v2.cli.evaluator).
    """
    return evaluate_prepared(prepare(ckpt_path, options, out=out), out=out)


def check_writable(path, flag):
    """Refuses a file to be written into a folder that does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UserError('%s=%s: the folder %s does not exist' % (flag, path, folder),
                        settings=(flag,))
