"""What a checkpoint holds, and how one is found, read and checked.

Every checkpoint is self-contained: besides the weights, batch-norm statistics,
optimizer slots and step (and float16's loss scale and the weight averages where
a run has them), it stores the architecture (ModelConfig as JSON), the training
recipe (JSON) and the per-pixel training-set mean. The evaluator needs
nothing else, and a checkpoint of another architecture is refused before any
variable is restored, never half-loaded. A run resumes from the newest checkpoint
that reads whole; a newer one that does not is set aside (renamed, never deleted).
"""

import dataclasses
import json
import os
import re
import shutil

import tensorflow as tf

from v2.errors import UserError
from v2.nets.model import ModelConfig

ARCHITECTURE_KEY = 'architecture/.ATTRIBUTES/VARIABLE_VALUE'
TRAINING_KEY = 'training/.ATTRIBUTES/VARIABLE_VALUE'
MEAN_KEY = 'pixel_mean/.ATTRIBUTES/VARIABLE_VALUE'
STEP_KEY = 'step/.ATTRIBUTES/VARIABLE_VALUE'
EMA_PREFIX = 'ema/'
LOSS_SCALE_PREFIX = 'loss_scale/'
# With a validation split, the checkpoint of the best validation accuracy is kept in
# <ckpt_path>/best, apart from the rolling ones, with best.json naming its step and figure.
BEST_FOLDER = 'best'
BEST_RECORD = 'best.json'


def make(model, pixel_mean, *, step=None, optimizer=None, training_json='', loss_scale=None,
         ema=None):
    """The tf.train.Checkpoint of a run, the one place its layout is set (the keys above):
    the trainer's (TrainState.checkpoint) and the evaluator's (evaluate.Restorer), which
    leaves out the optimizer and the step."""
    objects = dict(model=model,
                   architecture=tf.Variable(model.config.to_json(), trainable=False),
                   pixel_mean=pixel_mean if isinstance(pixel_mean, tf.Variable)
                   else tf.Variable(pixel_mean, trainable=False))
    if step is not None:
        objects['step'] = step
    if optimizer is not None:
        objects['optimizer'] = optimizer
        objects['training'] = tf.Variable(training_json, trainable=False)
    if loss_scale is not None:
        objects['loss_scale'] = loss_scale
    if ema is not None:
        objects['ema'] = ema
    return tf.train.Checkpoint(**objects)


def remove_partial_saves(folder):
    """Deletes the ckpt-N_temp folders a save leaves when it is killed; returns their paths.

    TensorFlow writes a checkpoint into such a folder and renames the files into
    place before it updates the folder's index, so a cut-off save never touches the
    previous checkpoint; it only leaves this debris.
    """
    removed = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith('ckpt-') and name.endswith('_temp') and os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def is_prefix(path):
    """True if `path` is a checkpoint prefix (path.index exists)."""
    return tf.io.gfile.exists(path + '.index')


def find(ckpt_path):
    """The checkpoint prefix that --ckpt_path names: a prefix, or a folder's latest.

    Raises UserError when there is none.
    """
    if is_prefix(ckpt_path):
        return ckpt_path
    if not os.path.exists(ckpt_path):
        raise UserError('ckpt_path=%s: no such checkpoint or folder' % ckpt_path,
                        settings=('ckpt_path',))
    if not os.path.isdir(ckpt_path):
        raise UserError('ckpt_path=%s is not a checkpoint prefix (no %s.index) nor a folder'
                        % (ckpt_path, ckpt_path), settings=('ckpt_path',))
    prefix = tf.train.latest_checkpoint(ckpt_path)
    if prefix is None:
        raise UserError('ckpt_path=%s: the folder holds no checkpoint (train one into it '
                        'with run_trainer.py)' % ckpt_path, settings=('ckpt_path',))
    return prefix


def find_all(ckpt_path):
    """Every checkpoint the folder's index lists, oldest first (or the one prefix)."""
    if is_prefix(ckpt_path):
        return [ckpt_path]
    find(ckpt_path)                                       # the errors for a bad folder
    state = tf.train.get_checkpoint_state(ckpt_path)
    return [p for p in state.all_model_checkpoint_paths if is_prefix(p)]


def read_best(ckpt_path):
    """The record of the best-on-validation checkpoint kept in the run folder ckpt_path
    ({'step', 'validation_accuracy', 'checkpoint'}), or None where there is none."""
    path = os.path.join(ckpt_path, BEST_FOLDER, BEST_RECORD)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            record = json.load(f)
        record['checkpoint'] = os.path.join(ckpt_path, BEST_FOLDER,
                                            os.path.basename(record['checkpoint']))
        float(record['validation_accuracy']), int(record['step'])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError('%s: not a record of the best checkpoint (%s); delete it to start '
                        'the selection afresh' % (path, e)) from None
    return record


def write_best(ckpt_path, prefix, step, validation_accuracy):
    """Records the best checkpoint; written whole or not at all (renamed into place)."""
    path = os.path.join(ckpt_path, BEST_FOLDER, BEST_RECORD)
    with open(path + '.tmp', 'w') as f:
        json.dump({'step': int(step), 'validation_accuracy': float(validation_accuracy),
                   'checkpoint': os.path.basename(prefix)}, f)
    os.replace(path + '.tmp', path)


def find_best(ckpt_path):
    """(prefix, record) of the best-on-validation checkpoint of a run folder, or None."""
    if is_prefix(ckpt_path) or not os.path.isdir(ckpt_path):
        return None
    record = read_best(ckpt_path)
    if record is None or not is_prefix(record['checkpoint']):
        return None
    return record['checkpoint'], record


class TornCheckpoint(UserError):
    """A checkpoint whose files do not read (cut off, damaged, missing): the trainer sets it
    aside and resumes from an older one. A checkpoint that reads but is not this trainer's,
    or describes a network this code cannot build, is a plain UserError: never set aside."""


def _first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class Saved:
    """The metadata of a checkpoint, read without building a model."""

    def __init__(self, prefix):
        self.prefix = prefix
        try:
            reader = tf.train.load_checkpoint(prefix)
            found = reader.has_tensor(ARCHITECTURE_KEY)
            architecture = reader.get_tensor(ARCHITECTURE_KEY).decode() if found else None
        except Exception as e:       # the reader raises IndexError, OpError, ... on bad files
            raise TornCheckpoint('%s: not a readable checkpoint of this trainer (%s)'
                                 % (prefix, _first_line(e))) from None
        if architecture is None:
            raise UserError('%s: not a checkpoint of this trainer (it records no network)'
                            % prefix)
        try:
            self.config = ModelConfig.from_json(architecture)
        except Exception as e:       # a network this code does not know
            raise UserError('%s: a network this code cannot build (%s)'
                            % (prefix, _first_line(e))) from None
        try:
            self.pixel_mean = reader.get_tensor(MEAN_KEY)
            has = reader.has_tensor
            self.step = int(reader.get_tensor(STEP_KEY)) if has(STEP_KEY) else None
            self.training_json = (reader.get_tensor(TRAINING_KEY).decode()
                                  if has(TRAINING_KEY) else '')
            names = reader.get_variable_to_shape_map()
            self.has_ema = any(k.startswith(EMA_PREFIX) for k in names)
            self.has_loss_scale = any(k.startswith(LOSS_SCALE_PREFIX) for k in names)
        except Exception as e:       # the reader raises IndexError, OpError, ... on bad files
            raise TornCheckpoint('%s: not a readable checkpoint of this trainer (%s)'
                                 % (prefix, _first_line(e))) from None

    def check_whole(self):
        """Reads every tensor once: a data file cut off or damaged (each tensor carries a
        checksum) is refused here, as Saved refuses an unreadable index; returns self."""
        try:
            reader = tf.train.load_checkpoint(self.prefix)
            for name in reader.get_variable_to_shape_map():
                reader.get_tensor(name)
        except Exception as e:       # IndexError (cut off), OpError (checksum), ...
            raise TornCheckpoint('%s: not a readable checkpoint of this trainer (%s)'
                                 % (self.prefix, _first_line(e))) from None
        return self

    def check_matches(self, wanted):
        """Raises UserError naming both if a field of `wanted` (a dict) differs from the saved one.

        The trainer passes every field of its config; the evaluator only those the
        user set explicitly (the rest come from the checkpoint).
        """
        differ = [f for f, v in wanted.items() if getattr(self.config, f) != v]
        if not differ:
            return
        has = ', '.join('%s=%s' % (f, getattr(self.config, f)) for f in differ)
        ask = ', '.join('%s=%s' % (f, wanted[f]) for f in differ)
        try:
            ask = '%s (%s)' % (dataclasses.replace(self.config, **wanted).describe(), ask)
        except UserError:
            pass           # the fields alone make no valid net: name just the fields
        raise UserError('%s is a %s checkpoint (%s), but %s was asked for'
                        % (self.prefix, self.config.describe(), has, ask))


def _files_of(prefix):
    """The files of a checkpoint: prefix.index and its prefix.data-NNNNN-of-NNNNN shards."""
    folder, base = os.path.split(prefix)
    data = re.compile(re.escape(base) + r'\.data-\d{5}-of-\d{5}$')
    return [os.path.join(folder, name) for name in sorted(os.listdir(folder or '.'))
            if name == base + '.index' or data.match(name)]


def set_aside(prefix):
    """Renames a checkpoint's files to NAME.unreadable (NAME.unreadable-2, ... where one is
    already there), so that nothing reads them and nothing is deleted; returns the new names."""
    renamed = []
    for path in _files_of(prefix):
        target, n = path + '.unreadable', 1
        while os.path.exists(target):
            n += 1
            target = '%s.unreadable-%d' % (path, n)
        os.rename(path, target)
        renamed.append(target)
    return renamed


def write_index(folder, prefixes, timestamps=(), last_preserved=None):
    """Rewrites the folder's `checkpoint` index to list `prefixes` (oldest first; the last
    is the latest), as tf.train.CheckpointManager writes it: paths relative to the folder,
    renamed into place whole."""
    lines = ['model_checkpoint_path: %s' % json.dumps(os.path.relpath(prefixes[-1], folder))]
    lines += ['all_model_checkpoint_paths: %s' % json.dumps(os.path.relpath(p, folder))
              for p in prefixes]
    if len(timestamps) == len(prefixes):
        lines += ['all_model_checkpoint_timestamps: %r' % float(t) for t in timestamps]
    if last_preserved is not None:
        lines.append('last_preserved_timestamp: %r' % float(last_preserved))
    path = os.path.join(folder, 'checkpoint')
    with open(path + '.tmp', 'w') as f:
        f.write('\n'.join(lines) + '\n')
    os.replace(path + '.tmp', path)


def newest_readable(folder, out=print, may_write=True):
    """The Saved of the newest checkpoint the folder's index lists that reads whole.

    A newer one that does not read (a data file cut off by a copy, a disk error) is set
    aside (set_aside) and dropped from the index, each with a one-line note, where
    may_write; other workers of a run (may_write False) only skip it. None where the
    index lists no checkpoint whose files are there; UserError, touching nothing, where
    none of them reads.
    """
    state = tf.train.get_checkpoint_state(folder)
    if state is None or not state.model_checkpoint_path:
        return None
    listed = list(state.all_model_checkpoint_paths)
    timestamps = list(state.all_model_checkpoint_timestamps)
    if state.model_checkpoint_path not in listed:
        listed.append(state.model_checkpoint_path)
        timestamps = []
    if not any(_files_of(p) for p in listed):
        return None                                     # nothing there: a fresh start
    unreadable = []
    for prefix in reversed(listed):
        try:
            saved = Saved(prefix).check_whole()
            break
        except TornCheckpoint as e:      # any other refusal stands: nothing is set aside
            unreadable.append((prefix, e))
    else:
        raise unreadable[0][1]
    if unreadable and may_write:
        keep = listed.index(saved.prefix) + 1
        for prefix, error in unreadable:
            renamed = set_aside(prefix)
            out('note: %s; %s, and the run resumes from %s'
                % (str(error), 'set aside as %s' % ', '.join(os.path.basename(p)
                                                            for p in renamed)
                   if renamed else 'its files are missing', saved.prefix))
        write_index(folder, listed[:keep], timestamps[:keep],
                    state.last_preserved_timestamp or None)
    elif unreadable:
        for _, error in unreadable:
            out('note: %s; skipped here (the run that writes this folder sets it aside), '
                'resuming from %s' % (str(error), saved.prefix))
    return saved


def restore(checkpoint, prefix):
    """Restores every variable of `checkpoint` from `prefix`; all must be found."""
    try:
        status = checkpoint.restore(prefix)
        status.assert_existing_objects_matched()
        status.expect_partial()      # the evaluator does not restore optimizer slots
    except Exception as e:           # a damaged data file fails in several ways
        raise UserError('%s: could not be restored (%s)'
                        % (prefix, str(e).strip().splitlines()[0])) from None
    return status
