"""What a run records beside its TensorBoard scalars: a CSV of its windows and evaluations
(<log_path>/metrics.csv), and its network and recipe for TensorBoard's HParams dashboard.

One row per logging window (split 'train': the window's mean loss, cross-entropy and
accuracy, its last rate, its speed) and per evaluation (split 'validation' or 'test'),
so that curves can be drawn (python -m v2.tools.curves) or read by any spreadsheet
without TensorBoard. The trainer records a step before it writes that step's
checkpoint, so on a resume the rows after the checkpoint it resumes from are dropped:
the run writes them again.
"""

import csv
import json
import os

import tensorflow as tf

from v2.errors import UserError

FILE = 'metrics.csv'
COLUMNS = ('step', 'split', 'loss', 'cross_entropy', 'accuracy', 'error', 'learning_rate',
           'images_per_second')


class MetricsCsv:
    """An on_record(step, split, metrics) that appends each record to <log_path>/metrics.csv."""

    def __init__(self, log_path, resumed_at):
        self.path = os.path.join(log_path, FILE)
        kept = [row for row in read(self.path) if row['step'] <= resumed_at] \
            if os.path.exists(self.path) else []
        os.makedirs(log_path, exist_ok=True)
        with open(self.path + '.tmp', 'w', newline='') as f:
            writer = csv.DictWriter(f, COLUMNS)
            writer.writeheader()
            writer.writerows({k: row.get(k, '') for k in COLUMNS} for row in kept)
        os.replace(self.path + '.tmp', self.path)

    def __call__(self, step, split, metrics):
        row = {k: metrics.get(k, '') for k in COLUMNS[2:]}
        row.update(step=step, split=split, error=1.0 - float(metrics['accuracy']))
        with open(self.path, 'a', newline='') as f:
            csv.DictWriter(f, COLUMNS).writerow(row)


def read(path):
    """The rows of a metrics.csv, numbers as floats (step an int, blanks None)."""
    def number(value):
        return float(value) if value not in ('', None) else None
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
        return [dict({k: number(row.get(k)) for k in COLUMNS[2:]}, step=int(row['step']),
                     split=row['split']) for row in rows]
    except OSError as e:
        raise UserError('%s: cannot read it (%s)' % (path, e.strerror or e)) from None
    except (KeyError, ValueError, TypeError):
        raise UserError('%s: not a metrics.csv of this trainer (columns %s)'
                        % (path, ', '.join(COLUMNS))) from None


def both(first, second):
    """One on_record calling two (either may be None)."""
    if first is None or second is None:
        return first or second
    def record(*args):
        first(*args)
        second(*args)
    return record


def hyperparameters(model_config, recipe):
    """The run's network and recipe as flat TensorBoard hyper-parameters: 'network.num_layers',
    'recipe.schedule.values' (lists as comma-separated text), ..."""
    flat = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                walk('%s.%s' % (prefix, key), inner)
        elif isinstance(value, (list, tuple)):
            flat[prefix] = ','.join(str(v) for v in value)
        else:
            flat[prefix] = 'none' if value is None else value
    walk('network', json.loads(model_config.to_json()))
    walk('recipe', json.loads(recipe.to_json()))
    return flat


def write_hyperparameters(log_path, model_config, recipe, run_name):
    """Records the run for TensorBoard's HParams dashboard, in log_path itself.

    The dashboard treats log_path as one session: its hyper-parameters are these, its
    metrics the scalars of its train/, validation/ or test/ and evaluator/ runs, each
    shown at its last step, i.e. the run's final figures. A grid's runs (one log folder
    each, as v2.tools.experiments makes them) then line up in one table under
    tensorboard --logdir=<work_dir>.
    """
    from tensorboard.plugins.hparams import api as hp  # what TensorBoard reads it with
    writer = tf.summary.create_file_writer(log_path)
    with writer.as_default():
        hp.hparams(hyperparameters(model_config, recipe), trial_id=run_name)
    writer.close()
