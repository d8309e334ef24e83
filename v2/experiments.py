"""Experiments that regenerate the figures in files/ from our own training runs.

  python -m v2.experiments figure6 --data_path=../shared/cifar10 --out=files
  python -m v2.experiments architecture --out=files

figure6: He et al. 2015, Figure 6 -- plain nets get WORSE with depth (the
degradation problem), residual nets of the same depth get better. It trains the
plain and the residual net of every --depths for every --seeds with one recipe
(the paper's units: post-activation, option A shortcuts), records the training
error (the mean over each --record_every steps of the augmented batches, as the
paper plots it) and the test error at the same steps, and writes
  <out>/figure6.csv   every point: network, depth, seed, step, split, error, cross_entropy
  <out>/figure6.json  the recipe, and final errors per network and depth, mean and std
and then draws <out>/resnet.png and <out>/plain.png from the CSV (v2.figures).
Runs are deterministic (op determinism, batches keyed by seed and step): the
same flags give the same numbers. Each run keeps its checkpoints and points in
--work_dir, so an interrupted experiment picks up where it stopped.

architecture: <out>/architecture.json and <out>/architecture.png, the ResNet-20
we build (stages, units, shortcuts, shapes), read from the model (v2.anatomy).
"""

import csv
import json
import os
import statistics

from absl import flags

from v2 import cli, data, model, schedule, train
from v2.errors import UserError

import tensorflow as tf  # noqa: E402  (after v2, which quiets its start-up)

FLAGS = flags.FLAGS

NETWORKS = ('plain', 'resnet')


def define_flags():
    """The command's flags; defined only when it runs, so that importing this module (the
    tests do) cannot clash with the trainer's flags of the same names."""
    flags.DEFINE_string('data_path', None, 'figure6: folder of the CIFAR-10 binary files.')
    flags.DEFINE_string('out', 'files', 'Folder for the figures, the CSV and the JSON.')
    flags.DEFINE_string('work_dir', 'runs/figure6',
                        'figure6: one folder per run (checkpoints, TensorBoard logs, points).')
    flags.DEFINE_list('depths', ['20', '56'], 'figure6: depths, 6n+2.')
    flags.DEFINE_list('seeds', ['1', '2', '3'], 'figure6: seeds; each depth and network runs once '
                      'per seed.')
    flags.DEFINE_integer('num_iterations', 1600, 'figure6: steps per run.', lower_bound=1)
    flags.DEFINE_list('lr_values', ['0.1', '0.01', '0.001'], 'figure6: learning rates.')
    flags.DEFINE_list('lr_boundaries', ['800', '1200'], 'figure6: steps where the rate changes.')
    flags.DEFINE_integer('warmup_iterations', 0, 'figure6: warm-up steps.', lower_bound=0)
    flags.DEFINE_float('warmup_lr', 0.01, 'figure6: the warm-up\'s (first) rate.')
    flags.DEFINE_enum('warmup', 'constant', ['constant', 'linear'], 'figure6: warm-up kind.')
    flags.DEFINE_float('bn_momentum', 0.9, 'figure6: batch norm\'s momentum.')
    flags.DEFINE_boolean('zero_init_residual', False, 'figure6: residual branches start at 0.')
    flags.DEFINE_list('networks', list(NETWORKS), 'figure6: plain, resnet or both.')
    flags.DEFINE_float('weight_decay', 1e-4, 'figure6: L2 weight decay.')
    flags.DEFINE_integer('batch_size', 128, 'figure6: batch size.', lower_bound=1)
    flags.DEFINE_integer('record_every', 100, 'figure6: steps between recorded points (training '
                         'error over those steps; test error at the last).', lower_bound=1)
    flags.DEFINE_enum('precision', 'bfloat16', ['float32', 'bfloat16'],
                      'figure6: compute precision.')
    flags.DEFINE_integer('resnet_version', 1,
                         'figure6: 1 = the 2015 paper\'s post-activation units.')
    flags.DEFINE_string('shortcut_type', 'A_subsample', 'figure6: shortcut of the residual '
                        'nets (A_subsample = the paper\'s option A).')
    flags.DEFINE_boolean('plot', True,
                         'Draw the PNGs after writing the CSV/JSON (needs matplotlib).')


def _integers(name):
    try:
        values = [int(v) for v in FLAGS[name].value]
    except ValueError:
        raise UserError('--%s=%s: expected integers separated by commas'
                        % (name, ','.join(FLAGS[name].value))) from None
    if not values:
        raise UserError('--%s: give at least one value' % name)
    return values


def recipe():
    """The flags that shape the numbers, as stored in <work_dir>/recipe.json and the JSON."""
    try:
        lr_values = [float(v) for v in FLAGS.lr_values]
    except ValueError:
        raise UserError('--lr_values=%s: expected numbers' % ','.join(FLAGS.lr_values)) from None
    return {'data_path': os.path.abspath(FLAGS.data_path) if FLAGS.data_path else None,
            'depths': _integers('depths'), 'seeds': _integers('seeds'),
            'num_iterations': FLAGS.num_iterations, 'batch_size': FLAGS.batch_size,
            'lr_values': lr_values, 'lr_boundaries': _integers('lr_boundaries')
            if FLAGS.lr_boundaries else [],
            'warmup_iterations': FLAGS.warmup_iterations, 'warmup_lr': FLAGS.warmup_lr,
            'warmup': FLAGS.warmup, 'bn_momentum': FLAGS.bn_momentum,
            'zero_init_residual': FLAGS.zero_init_residual, 'networks': list(FLAGS.networks),
            'momentum': 0.9, 'weight_decay': FLAGS.weight_decay,
            'record_every': FLAGS.record_every, 'precision': FLAGS.precision,
            'resnet_version': FLAGS.resnet_version, 'shortcut_type': FLAGS.shortcut_type,
            'deterministic': True, 'augmentation': '4-pixel pad, random 32x32 crop, flip'}


def run_configs(spec, network, depth, seed):
    """(ModelConfig, TrainConfig) of one run; ModelConfig checks the depth."""
    model_config = model.ModelConfig(
        model='resnet', num_layers=depth, resnet_version=spec['resnet_version'],
        shortcut_type=spec['shortcut_type'], shortcut_connections=network == 'resnet')
    folder = os.path.join(FLAGS.work_dir, '%s%d_seed%d' % (network, depth, seed))
    config = train.TrainConfig(
        ckpt_path=folder, log_path=os.path.join(folder, 'logs'),
        batch_size=spec['batch_size'], num_iterations=spec['num_iterations'],
        log_per_iterations=spec['record_every'], eval_every=spec['record_every'],
        weight_decay=spec['weight_decay'], momentum=spec['momentum'],
        schedule=schedule.Schedule(boundaries=spec['lr_boundaries'], values=spec['lr_values'],
                                   warmup_iterations=spec['warmup_iterations'],
                                   warmup_lr=spec['warmup_lr'], warmup=spec['warmup']),
        bn_momentum=spec['bn_momentum'], zero_init_residual=spec['zero_init_residual'],
        max_to_keep=1, seed=seed, precision=spec['precision'], deterministic=True)
    return model_config, config


class Points:
    """One run's recorded points, kept in <run folder>/points.jsonl as they come.

    On a resumed run, points after the checkpoint it resumes from are dropped: the
    trainer records a step's points before writing its checkpoint, so the file
    never lags the checkpoints, and the run regenerates what it drops.
    """

    def __init__(self, folder):
        self.path = os.path.join(folder, 'points.jsonl')
        latest = tf.train.latest_checkpoint(folder)
        resumed_at = int(latest.rsplit('-', 1)[1]) if latest else 0
        self.rows = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.rows = [row for row in map(json.loads, f) if row['step'] <= resumed_at]
        os.makedirs(folder, exist_ok=True)
        with open(self.path, 'w') as f:
            f.writelines(json.dumps(row) + '\n' for row in self.rows)

    def __call__(self, step, split, metrics):
        row = {'step': step, 'split': split, 'error': 1.0 - float(metrics['accuracy']),
               'cross_entropy': float(metrics['cross_entropy'])}
        self.rows.append(row)
        with open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')


def check_work_dir(spec):
    """Refuses a --work_dir whose runs were made with another recipe (their points would mix)."""
    os.makedirs(FLAGS.work_dir, exist_ok=True)
    path = os.path.join(FLAGS.work_dir, 'recipe.json')
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        shaping = {k: v for k, v in spec.items() if k not in ('depths', 'seeds', 'networks')}
        changed = sorted(k for k in shaping if before.get(k) != shaping[k])
        if changed:
            raise UserError('--work_dir=%s holds runs made with another %s; choose another '
                            '--work_dir (nothing there was changed)'
                            % (FLAGS.work_dir, ', '.join(changed)))
    with open(path, 'w') as f:
        json.dump(spec, f, indent=1, sort_keys=True)


def figure6(out):
    if not FLAGS.data_path:
        raise UserError('--data_path: give the folder of the CIFAR-10 binary files')
    train_paths = data.check_files(FLAGS.data_path, data.CIFAR10.train_files)
    data.check_files(FLAGS.data_path, data.CIFAR10.test_files)
    spec = recipe()
    runs = [(network, depth, seed) for depth in spec['depths'] for network in spec['networks']
            for seed in spec['seeds']]
    for depth in spec['depths']:              # checked before anything trains
        if depth < 8 or (depth - 2) % 6:
            raise UserError('--depths=%s: %d is not a CIFAR ResNet depth (6n+2: 8, 14, 20, 32, '
                            '44, 56, 110, ...)' % (','.join(FLAGS.depths), depth))
    unknown = set(spec['networks']) - set(NETWORKS)
    if unknown or not spec['networks']:
        raise UserError('--networks=%s: expected plain, resnet or both'
                        % ','.join(spec['networks']))
    check_work_dir(spec)
    rows = []
    for i, (network, depth, seed) in enumerate(runs, 1):
        model_config, config = run_configs(spec, network, depth, seed)
        name = '%s-%d seed %d' % (network, depth, seed)
        print('run %d/%d: %s (%s)' % (i, len(runs), name, config.ckpt_path), flush=True)
        points = Points(config.ckpt_path)
        train.train(model_config, config, FLAGS.data_path,
                    out=lambda line, name=name: print('  [%s] %s' % (name, line), flush=True),
                    on_record=points)
        rows += [dict(network=network, depth=depth, seed=seed, **row) for row in points.rows]
    os.makedirs(out, exist_ok=True)
    csv_path = os.path.join(out, 'figure6.csv')
    write_csv(rows, csv_path)
    summary = summarize(rows, spec)
    with open(os.path.join(out, 'figure6.json'), 'w') as f:
        json.dump({'recipe': dict(spec, data_path=os.path.basename(spec['data_path'].rstrip('/'))),
                   'training_images': sum(os.path.getsize(p) for p in train_paths)
                                      // data.CIFAR10.record_bytes,
                   'final': summary}, f, indent=1)
    print('wrote %s and %s' % (csv_path, os.path.join(out, 'figure6.json')))
    for line in table(summary):
        print(line)
    return csv_path


def write_csv(rows, path):
    fields = ['network', 'depth', 'seed', 'step', 'split', 'error', 'cross_entropy']
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator='\n')
        writer.writeheader()
        for row in rows:
            writer.writerow(dict(row, error='%.6f' % row['error'],
                                 cross_entropy='%.6f' % row['cross_entropy']))


def summarize(rows, spec):
    """Final training and test error of each network and depth: per seed, mean and std."""
    last = spec['num_iterations']
    summary = []
    for depth in spec['depths']:
        for network in spec['networks']:
            entry = {'network': network, 'depth': depth}
            for split in ('train', 'test'):
                errors = [r['error'] for seed in spec['seeds'] for r in rows
                          if (r['network'], r['depth'], r['seed'], r['split'], r['step'])
                          == (network, depth, seed, split, last)]
                entry[split] = {'per_seed': errors, 'mean': statistics.mean(errors),
                                'std': statistics.stdev(errors) if len(errors) > 1 else 0.0}
            summary.append(entry)
    return summary


def table(summary):
    lines = ['%-8s %5s  %-22s %-22s' % ('network', 'depth', 'final training error',
                                        'final test error')]
    for e in summary:
        lines.append('%-8s %5d  %-22s %-22s' % (
            e['network'], e['depth'],
            '%.2f%% +- %.2f' % (100 * e['train']['mean'], 100 * e['train']['std']),
            '%.2f%% +- %.2f' % (100 * e['test']['mean'], 100 * e['test']['std'])))
    return lines


def architecture(out):
    from v2 import anatomy
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, 'architecture.json')
    with open(path, 'w') as f:
        json.dump(anatomy.describe(model.ModelConfig(num_layers=20)), f, indent=1)
    print('wrote %s' % path)
    return path


def main(argv):
    commands = {'figure6': figure6, 'architecture': architecture}
    if len(argv) != 2 or argv[1] not in commands:
        raise UserError('expected one command, %s (e.g. python -m v2.experiments figure6 '
                        '--data_path=../shared/cifar10)' % ' or '.join(commands))
    written = commands[argv[1]](FLAGS.out)
    if FLAGS.plot:
        from v2 import figures
        figures.draw(written, FLAGS.out)
    return 0


if __name__ == '__main__':
    define_flags()
    cli.run(main)
