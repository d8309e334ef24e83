r"""The runs behind the figures and tables, from a recipe in a flag file, each grid resumable.

  python -m v2.tools.experiments figure6 --flagfile=configs/figure6.flags --data_path=D \
      --out=results
  python -m v2.tools.experiments table --flagfile=configs/figure6.flags --data_path=D \
      --out=results
  python -m v2.tools.experiments switches --flagfile=configs/figure6.flags --data_path=D \
      --num_layers=20 --out=results
  python -m v2.tools.experiments architecture --out=results

(D: the 2,500 real images of docs/reproduction.md.) Each command takes the trainer's
flags (the recipe, usually a flag file from configs/) plus --seeds, and --depths
(figure6, table, calibration) or --num_layers (switches: one network), trains one
run per point of its grid into --work_dir (checkpoints, TensorBoard logs and the
recorded points of every run), and writes its results into --out. The default --out
is files/, the repository's own figures and tables, which a run there overwrites.
With figure6's recipe, one seed of figure6 (four runs) takes about an hour on the
2-core AMD EPYC, each switch of one seed about 15 minutes. Runs are resumable: an
interrupted command picks up where it stopped, a finished one is not trained again,
and a work_dir made with another recipe is refused. With --deterministic in the
recipe the same flags give the same numbers.

figure6: He et al. 2015, Figure 6. The plain and the residual net of every depth and
  seed; the training error (the mean over each logging window of the augmented
  batches, as the paper plots it) and the test error at every --eval_every step.
  Writes figure6.csv (every point), figure6.json (the recipe and the final errors:
  per seed, mean, std), figure6.md (the final errors as the README's table) and
  figure6.png (both panels). --previous=files/figure6.csv keeps the runs of a figure
  made before with the same recipe (its work_dir may be gone) and trains only the
  depths and seeds it lacks. --reference trains the same grid through a Keras 3
  model of the same nets instead (figure6_reference.*).
table: the test error of the final checkpoint of every depth and seed, evaluated as
  run_evaluator.py does, beside the paper's (v2.tools.catalog.PAPER_ERRORS), labelled
  with the images used: table.csv, table.json, table.md. With figure6's recipe and
  --work_dir it is made from figure6's ResNets, without training them again.
switches: the recipe with each modern option on (label smoothing, a cosine schedule
  with linear warm-up, weight averaging, cutout, flip test-time augmentation) against
  the recipe itself, over the seeds: switches.csv, switches.json, switches.md. Its
  default runs are figure6's and table's: with their --work_dir they are not trained
  again.
calibration: with a validation split in the recipe, every depth and seed's last and
  best-on-validation checkpoints on the test set, and the last one's calibration (ECE,
  NLL, Brier) before and after temperature scaling fitted on the validation images:
  calibration.csv, calibration.json, calibration.md.
architecture: architecture.json, the ResNet-20 we build, read from the model
  (v2.tools.anatomy); drawn as architecture.png.
"""

import csv
import dataclasses
import json
import os
import statistics
import sys

import tensorflow as tf

from v2.cli import app
from v2.data import cifar
from v2.errors import UserError
from v2.evaluation import evaluate
from v2.nets import model
from v2.runtime import devices
from v2.tools import catalog, flags
from v2.training import loop
from v2.training.options import RunOptions
from v2.training.recipe import Recipe

FLAGS = flags.FLAGS
NETWORKS = ('plain', 'resnet')

# The modern options of the switches command: what each changes in the recipe.
SWITCHES = {
    'label_smoothing': 'label_smoothing=0.1 (Szegedy et al. 2016)',
    'cosine': 'cosine decay to 0 after a linear warm-up over the first 5% of the steps',
    'ema': 'weight averages with decay 0.999, evaluated instead of the weights',
    'cutout': 'cutout of 16x16 (DeVries & Taylor 2017)',
    'mixup': 'mixup with alpha 1.0 (Zhang et al. 2018)',
    'cutmix': 'CutMix with alpha 1.0 on half the batches (Yun et al. 2019)',
    'zero_init': 'zero-initialised residual branches (the last batch norm of each unit)',
    'distill': 'distilled from a ResNet-56 teacher, alpha 0.9, T 4 (Hinton et al. 2015)',
    'tta': 'the default runs evaluated with flipped views averaged',
}


@dataclasses.dataclass
class Grid:
    """What every experiment command reads from its flags, read and checked once by
    main(): the data, the recipe, the seeds, the work folder, the runs' options. The
    commands and their helpers take it; none reads a flag."""
    data_path: str
    train_images: int
    test_images: int
    recipe: Recipe
    seeds: list
    folder: str                  # --work_dir: one folder per run
    out: str                     # where the results go
    options: RunOptions          # the runs' own, with their folders set per run
    devices: tuple = ()

    @property
    def log_every(self):
        return self.options.log_per_iterations

    def check_work_dir(self, spec):
        """Refuses a work_dir whose runs were made with another recipe (their points would
        mix); records this one's."""
        os.makedirs(self.folder, exist_ok=True)
        path = os.path.join(self.folder, 'recipe.json')
        if os.path.exists(path):
            with open(path) as f:
                before = json.load(f)
            changed = sorted(k for k in set(before) | set(spec) if before.get(k) != spec.get(k))
            if changed:
                raise UserError('--work_dir=%s holds runs made with another %s; choose another '
                                '--work_dir (nothing there was changed)'
                                % (self.folder, ', '.join(changed)))
        with open(path, 'w') as f:
            json.dump(spec, f, indent=1, sort_keys=True)

    def spec(self, config):
        """What makes figure6's and table's runs comparable (the same for both, so that a
        table can be made of a figure's runs without training them again): the recipe
        but its seed, the net, the record cadence and the data."""
        return spec_of(self.recipe, config, record_every=self.log_every,
                       eval_every=self.options.eval_every, data=self.train_images)

    def depth_runs(self, base, depths):
        """The Run of every depth and seed of the grid, depth by depth."""
        return [Run(dict(depth=depth, seed=seed),
                    run_folder(self.folder, dataclasses.replace(base, num_layers=depth), seed),
                    dataclasses.replace(base, num_layers=depth),
                    dataclasses.replace(self.recipe, seed=seed))
                for depth in depths for seed in self.seeds]

    def label(self):
        return data_label(self.train_images, self.test_images, self.recipe.validation_split)

    def train(self, run, index, count):
        """Trains one run to its end (or resumes it); returns its Points."""
        print('run %d/%d: %s (%s)' % (index, count, run.name, run.folder), flush=True)
        points = Points(run.folder)
        options = dataclasses.replace(self.options, ckpt_path=run.folder,
                                      log_path=os.path.join(run.folder, 'logs'), max_to_keep=1,
                                      save_every=self.log_every)
        result = loop.train(run.model_config, run.recipe, options, self.data_path,
                            out=lambda line: print('  [%s] %s' % (run.name, line), flush=True),
                            on_record=points)
        if result.stopped_by:           # Ctrl-C or SIGTERM stops the grid, not just this run
            sys.exit(128 + result.stopped_by)
        return points

    def evaluated(self, run, **options):
        """The results of a run's last (and best) checkpoint, evaluated as run_evaluator.py
        does, with these EvalOptions."""
        return evaluate.evaluate_checkpoints(
            run.folder, evaluate.EvalOptions(data_path=self.data_path,
                                             batch_size=self.options.eval_batch_size, **options),
            out=lambda line: None).results

    def test_error(self, run, tta=False):
        """The test error of a run's final checkpoint (never the best on validation)."""
        return evaluate.final(self.evaluated(run, tta=tta)).metrics.error


def read_grid(command):
    """The Grid the flags describe for `command`, its data checked."""
    if not FLAGS.data_path:
        raise UserError('--data_path: give the folder of the CIFAR-10 binary files')
    config = flags.model_config(num_layers=FLAGS.num_layers or 20)
    spec = cifar.spec_of(config.dataset, FLAGS.data_path)
    count = lambda paths: sum(os.path.getsize(p) for p in paths) // spec.record_bytes  # noqa
    train_images = count(cifar.check_files(FLAGS.data_path, spec.train_files, spec))
    test_images = count(cifar.check_files(FLAGS.data_path, spec.test_files, spec))
    seeds = list(flags.numbers('seeds', int, at_least_one=True))
    return Grid(FLAGS.data_path, train_images, test_images, flags.recipe(), seeds,
                FLAGS.work_dir or os.path.join('runs', command), FLAGS.out,
                flags.run_options(config), tuple(FLAGS.devices))


def check_depths(depths):
    """The flags' net at the first depth; every depth is checked before anything trains."""
    config = flags.model_config(num_layers=None)
    for depth in depths:
        try:
            dataclasses.replace(config, num_layers=depth)
        except UserError as e:
            raise UserError('--depths=%s: %s' % (','.join(map(str, depths)), e)) from None
    return dataclasses.replace(config, num_layers=depths[0])


class Points:
    """One run's recorded points, kept in <run folder>/points.jsonl as they come.

    On a resumed run, points after the checkpoint it resumes from are dropped: the
    trainer records a step's points before writing its checkpoint, so the file
    never lags the checkpoints, and the run regenerates what it drops.
    """

    def __init__(self, folder, keep_all=False):
        self.path = os.path.join(folder, 'points.jsonl')
        latest = tf.train.latest_checkpoint(folder)
        resumed_at = int(latest.rsplit('-', 1)[1]) if latest else 0
        self.rows = []
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.rows = [row for row in map(json.loads, f)
                             if keep_all or row['step'] <= resumed_at]
        os.makedirs(folder, exist_ok=True)
        with open(self.path, 'w') as f:
            f.writelines(json.dumps(row) + '\n' for row in self.rows)

    def __call__(self, step, split, metrics):
        row = {'step': step, 'split': split, 'error': 1.0 - float(metrics['accuracy']),
               'cross_entropy': float(metrics['cross_entropy'])}
        self.rows.append(row)
        with open(self.path, 'a') as f:
            f.write(json.dumps(row) + '\n')

    def final(self, split, step):
        return [r for r in self.rows if (r['split'], r['step']) == (split, step)]


@dataclasses.dataclass
class Run:
    """One point of a grid: its labels, its folder and what it trains."""
    labels: dict
    folder: str
    model_config: model.ModelConfig
    recipe: object

    @property
    def name(self):
        return ' '.join('%s %s' % (k, v) for k, v in self.labels.items())


def spec_of(recipe, config, **extra):
    """What makes the runs of a work_dir comparable: the recipe but its seed, the net."""
    shaping = json.loads(recipe.to_json())
    shaping.pop('seed')
    return dict(recipe=shaping, network=json.loads(dataclasses.replace(
        config, num_layers=None, shortcut_connections=True).to_json()), **extra)


def run_folder(folder, config, seed, prefix=''):
    """<folder>/resnet56_seed2, plain20_seed1, wrn-16-8_seed3, keras_resnet20_seed1, ..."""
    if config.model == 'resnet' and not config.bottleneck:
        name = '%s%d' % ('resnet' if config.shortcut_connections else 'plain', config.num_layers)
    else:
        name = config.slug()
    return os.path.join(folder, '%s%s_seed%d' % (prefix, name, seed))


def mean_std(values):
    return (statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0)


def number(values, digits=3):
    """'mean ± std' of the values; one run has no spread to show."""
    mean, std = mean_std(values)
    return ('%.*f ± %.*f' % (digits, mean, digits, std) if len(values) > 1
            else '%.*f' % (digits, mean))


def percent(values):
    """'mean ± std' in percent of fractions."""
    return number([100 * v for v in values], 2)


# --- figure6 -------------------------------------------------------------------------------

def figure6(grid, base, depths, networks, reference=False, previous=''):
    """figure6: the plain and residual nets of every depth and seed, trained (or through
    the Keras model) with their training and test error recorded; writes figure6.*.

    previous: a figure6.csv written before with the same recipe, network and data (its
    figure6.json beside it says so): its runs are kept as they are, not trained again,
    and the figure and tables hold them beside the new ones."""
    if not grid.options.eval_every or grid.recipe.validation_split:
        raise UserError('figure6 plots the test error: give eval_every (e.g. the same as '
                        'log_per_iterations) and no validation_split',
                        settings=('eval_every', 'log_per_iterations', 'validation_split'))
    if reference:        # the trainer sets up its devices itself; Keras needs it done here
        devices.setup('default', devices=grid.devices, tf32=grid.options.tf32)
    name = 'figure6_reference' if reference else 'figure6'
    implementation = 'Keras 3 (v2.tools.keras_nets)' if reference else 'v2'
    rows = previous_rows(previous, grid, base, implementation) if previous else []  # first
    grid.check_work_dir(grid.spec(base))
    every_depth = sorted({r['depth'] for r in rows} | set(depths))    # the figure's, kept too
    every_network = [n for n in NETWORKS
                     if n in networks or any(r['network'] == n for r in rows)]
    configs = {(network, depth): dataclasses.replace(base, num_layers=depth,
                                                     shortcut_connections=network == 'resnet')
               for depth in every_depth for network in every_network}
    kept = {(r['network'], r['depth'], r['seed']) for r in rows}
    runs = [Run(dict(network=network, depth=depth, seed=seed),
                # The Keras runs keep their own folders: figure6 and figure6 --reference
                # may share a work_dir, and neither may take the other's finished runs.
                run_folder(grid.folder, configs[network, depth], seed,
                           'keras_' if reference else ''),
                configs[network, depth], dataclasses.replace(grid.recipe, seed=seed))
            for depth in depths for network in networks for seed in grid.seeds
            if (network, depth, seed) not in kept]
    for i, run in enumerate(runs, 1):
        points = (reference_run(grid, run, i, len(runs)) if reference
                  else grid.train(run, i, len(runs)))
        rows += [dict(run.labels, **row) for row in points.rows]
    seeds = sorted({r['seed'] for r in rows} | set(grid.seeds))
    summary = summarize(rows, every_depth, every_network, seeds, grid.recipe.num_iterations)
    label = grid.label() + ('; trained through the Keras 3 model of the same nets'
                            if reference else '')
    written = write_results(
        grid.out, name, rows, ['network', 'depth', 'seed', 'step', 'split', 'error',
                               'cross_entropy'],
        {'recipe': json.loads(grid.recipe.to_json()), 'seeds': seeds,
         'network': json.loads(base.to_json()),
         'implementation': implementation,
         'training_images': grid.train_images, 'test_images': grid.test_images,
         'final': summary},
        figure6_markdown(summary, configs, grid.recipe, label), show=False)
    for line in summary_lines(summary):
        print(line)
    return written


# What a figure6.json records of the runs beside it that must be the same to join them.
_NOT_COMPARED = {'recipe': ('seed',), 'network': ('num_layers', 'shortcut_connections')}


def previous_rows(path, grid, base, implementation):
    """The points of a figure6.csv written before, checked against its figure6.json: made
    with this recipe (but its seed), this network (but its depth and shortcuts), the same
    number of training and test images and the same implementation (this trainer's or the
    Keras reference's), else refused in one line."""
    json_path = os.path.splitext(path)[0] + '.json'
    try:
        with open(json_path) as f:
            before = json.load(f)
    except (OSError, ValueError) as e:
        raise UserError('--previous=%s: cannot read %s beside it (%s)'
                        % (path, json_path, getattr(e, 'strerror', None) or e)) from None
    now = {'recipe': json.loads(grid.recipe.to_json()), 'network': json.loads(base.to_json()),
           'training_images': grid.train_images, 'test_images': grid.test_images,
           'implementation': implementation}
    # A setting added since (mixup, distillation, ...) was its default then.
    defaults = {'recipe': json.loads(Recipe().to_json()),
                'network': json.loads(model.ModelConfig().to_json())}
    changed = []
    for key, value in now.items():
        then = before.get(key)
        if isinstance(value, dict) and isinstance(then, dict):
            then = {**defaults[key], **then}
            changed += ['%s.%s' % (key, k) for k in sorted(set(value) | set(then))
                        if k not in _NOT_COMPARED[key] and value.get(k) != then.get(k)]
        elif value != then:
            changed.append(key)
    if changed:
        raise UserError('--previous=%s: its runs were made with another %s; they cannot join '
                        'these (nothing was written)' % (path, ', '.join(changed)))
    from v2.tools import figures
    return [dict(r, cross_entropy=float(r['cross_entropy'])) for r in figures.read_points(path)]


def figure6_markdown(summary, configs, recipe, label):
    """The final errors as a Markdown table (the README's results table is this file's)."""
    lines = ['Final errors (%%, mean ± std over seeds) after %d iterations, from the last '
             'logging window (training) and the last evaluation (test); %s.'
             % (recipe.num_iterations, label), '',
             '| network | runs | final training error | final test error '
             '| paper, test (full data) |',
             '|---|---:|---:|---:|---|']
    for e in summary:
        network = configs[e['network'], e['depth']].describe()
        paper = catalog.PAPER_ERRORS.get(network)
        lines.append('| %s | %d | %s | %s | %s |' % (
            network, len(e['test']['per_seed']), percent(e['train']['per_seed']),
            percent(e['test']['per_seed']), '%.2f (%s)' % paper if paper else '-'))
    return '\n'.join(lines) + '\n'


def reference_run(grid, run, index, count):
    """figure6 --reference: one run through the Keras model (a finished one is kept)."""
    from v2.tools import keras_nets
    print('run %d/%d: %s, Keras reference (%s)' % (index, count, run.name, run.folder),
          flush=True)
    points = Points(run.folder, keep_all=True)
    if points.final('test', run.recipe.num_iterations):
        return points
    points.rows = []
    open(points.path, 'w').close()
    keras_nets.fit_reference(run.model_config, run.recipe, grid.data_path, grid.log_every,
                             points, out=lambda line: print('  [%s] %s' % (run.name, line),
                                                            flush=True))
    return points


def write_csv(rows, path, fields):
    with open(path, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fields, lineterminator='\n', extrasaction='ignore')
        writer.writeheader()
        for row in rows:
            writer.writerow({k: '%.6f' % v if isinstance(v, float) else v
                             for k, v in row.items()})


def summarize(rows, depths, networks, seeds, last):
    """Final training and test error of each network and depth that has runs: per seed
    (the seeds named), mean and std."""
    summary = []
    for depth in depths:
        for network in networks:
            entry = {'network': network, 'depth': depth}
            for split in ('train', 'test'):
                final = [(seed, r['error']) for seed in seeds for r in rows
                         if (r['network'], r['depth'], r['seed'], r['split'], r['step'])
                         == (network, depth, seed, split, last)]
                errors = [error for _, error in final]
                if not errors:
                    break                   # not run (a depth of one network only)
                mean, std = mean_std(errors)
                entry[split] = {'per_seed': errors, 'mean': mean, 'std': std}
                entry['seeds'] = [seed for seed, _ in final]
            else:
                summary.append(entry)
    return summary


def summary_lines(summary):
    lines = ['%-8s %5s  %-22s %-22s' % ('network', 'depth', 'final training error',
                                        'final test error')]
    for e in summary:
        lines.append('%-8s %5d  %-22s %-22s' % (
            e['network'], e['depth'],
            percent(e['train']['per_seed']) + '%', percent(e['test']['per_seed']) + '%'))
    return lines


# --- table ---------------------------------------------------------------------------------

def data_label(train_images, test_images, validation):
    used = train_images - validation
    return ('%d training images%s, %d test images%s'
            % (used, ' (%d more held out for validation)' % validation if validation else '',
               test_images, '' if train_images == 50000 and test_images == 10000
               else ' (not the full CIFAR-10: not comparable with the papers\' figures)'))


def table(grid, base, depths):
    """table: the test error of the final checkpoint of every depth and seed, beside the
    paper's; writes table.*."""
    grid.check_work_dir(grid.spec(base))
    runs = grid.depth_runs(base, depths)
    rows = []
    for i, run in enumerate(runs, 1):
        points = grid.train(run, i, len(runs))
        final_train = points.final('train', grid.recipe.num_iterations)
        rows.append(dict(run.labels, network=run.model_config.describe(),
                         train_error=final_train[-1]['error'] if final_train else float('nan'),
                         test_error=grid.test_error(run)))
    entries = []
    for depth in depths:
        mine = [r for r in rows if r['depth'] == depth]
        network = mine[0]['network']
        paper = catalog.PAPER_ERRORS.get(network)
        entries.append(dict(network=network, depth=depth, runs=len(mine),
                            test_errors=[r['test_error'] for r in mine],
                            train_errors=[r['train_error'] for r in mine],
                            paper=paper[0] if paper else None,
                            paper_source=paper[1] if paper else None))
    return write_results(grid.out, 'table', rows, ['network', 'depth', 'seed', 'train_error',
                                                   'test_error'],
                         dict(recipe=json.loads(grid.recipe.to_json()), seeds=grid.seeds,
                              data=grid.label(), results=entries),
                         table_markdown(entries, grid.label(), grid.recipe))


def table_markdown(entries, label, recipe):
    lines = ['Final test error (%%, mean ± std over seeds) after %d iterations; %s.'
             % (recipe.num_iterations, label), '',
             '| network | runs | final training error | test error | paper (full data) |',
             '|---|---:|---:|---:|---|']
    for e in entries:
        paper = '%.2f (%s)' % (e['paper'], e['paper_source']) if e['paper'] else '-'
        lines.append('| %s | %d | %s | %s | %s |' % (e['network'], e['runs'],
                                                     percent(e['train_errors']),
                                                     percent(e['test_errors']), paper))
    return '\n'.join(lines) + '\n'


def write_results(out, name, rows, fields, summary, markdown, show=True):
    """<out>/<name>.csv (the rows), .json (the summary) and .md (the table); returns the CSV's
    path."""
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, name + suffix) for suffix in ('.csv', '.json', '.md')]
    write_csv(rows, paths[0], fields)
    with open(paths[1], 'w') as f:
        json.dump(summary, f, indent=1)
    with open(paths[2], 'w') as f:
        f.write(markdown)
    print('wrote %s' % ', '.join(paths))
    if show:
        print(markdown)
    return paths[0]


# --- switches ------------------------------------------------------------------------------

TEACHER_LAYERS = 56                     # the distill switch's teacher, trained first


def switched(recipe, switch, teacher=''):
    """The recipe with one modern option on (distill: from the checkpoint `teacher`)."""
    if switch == 'distill':
        return dataclasses.replace(recipe, teacher_ckpt=teacher)
    if switch == 'label_smoothing':
        return dataclasses.replace(recipe, label_smoothing=0.1)
    if switch == 'cosine':
        warmup = max(1, recipe.num_iterations // 20)
        return dataclasses.replace(recipe, schedule=dataclasses.replace(
            recipe.schedule, decay='cosine', cosine_steps=recipe.num_iterations,
            warmup='linear', warmup_iterations=warmup, warmup_lr=0.0))
    if switch == 'ema':
        return dataclasses.replace(recipe, ema_decay=0.999)
    if switch == 'mixup':
        return dataclasses.replace(recipe, mixup_alpha=1.0)
    if switch == 'cutmix':
        return dataclasses.replace(recipe, cutmix_alpha=1.0, cutmix_prob=0.5)
    if switch == 'zero_init':
        return dataclasses.replace(recipe, zero_init_residual=True)
    if switch == 'cutout':
        return dataclasses.replace(recipe, cutout=16)
    return recipe                                       # tta: the default runs


def switches(grid, config, chosen):
    """switches: the recipe with each modern option on against the recipe itself, over the
    seeds; writes switches.*."""
    grid.check_work_dir(grid.spec(config))
    variants = ['default'] + chosen
    trained = [v for v in variants if v != 'tta']
    teacher = grid.recipe.teacher_ckpt          # --teacher_ckpt: the distill switch's teacher
    recipe = dataclasses.replace(grid.recipe, teacher_ckpt='')
    before = []
    if 'distill' in chosen and not teacher:     # else a ResNet-56 of the recipe, seed 1, first
        teacher_config = dataclasses.replace(config, num_layers=TEACHER_LAYERS)
        teacher_run = Run(dict(variant='teacher', seed=1),   # figure6's own, where it has run
                          run_folder(grid.folder, teacher_config, 1), teacher_config,
                          dataclasses.replace(recipe, seed=1))
        before, teacher = [teacher_run], teacher_run.folder

    def run_of(variant, seed):          # the default runs are figure6's and table's
        default = run_folder(grid.folder, config, seed)
        return Run(dict(variant=variant, seed=seed), default if variant == 'default' else
                   os.path.join(grid.folder, '%s_%s' % (variant, os.path.basename(default))),
                   config, dataclasses.replace(switched(recipe, variant, teacher), seed=seed))
    runs = {(v, seed): run_of(v, seed) for v in trained for seed in grid.seeds}
    for run in before:
        grid.train(run, 0, len(runs))
    rows = []
    for i, ((variant, seed), run) in enumerate(sorted(runs.items()), 1):
        grid.train(run, i, len(runs))
        rows.append(dict(variant=variant, seed=seed, test_error=grid.test_error(run)))
    if 'tta' in chosen:
        rows += [dict(variant='tta', seed=seed,
                      test_error=grid.test_error(runs['default', seed], tta=True))
                 for seed in grid.seeds]
    default = [r['test_error'] for r in rows if r['variant'] == 'default']
    entries = []
    for variant in variants:
        errors = [r['test_error'] for r in rows if r['variant'] == variant]
        entries.append(dict(variant=variant, test_errors=errors,
                            change=statistics.mean(errors) - statistics.mean(default),
                            what=SWITCHES.get(variant, 'the recipe as it is')))
    seeds = grid.seeds
    lines = ['%s, %d iterations, %d seed%s; %s. Test error (%%) of the final checkpoint (mean '
             '± std over seeds), and its change against the default recipe.'
             % (config.describe(), grid.recipe.num_iterations, len(seeds),
                '' if len(seeds) == 1 else 's', grid.label()), '',
             '| switch | what | test error | change |', '|---|---|---:|---:|']
    lines += ['| %s | %s | %s | %+.2f |' % (e['variant'], e['what'], percent(e['test_errors']),
                                           100 * e['change']) for e in entries]
    return write_results(grid.out, 'switches', rows, ['variant', 'seed', 'test_error'],
                         dict(recipe=json.loads(grid.recipe.to_json()), seeds=seeds,
                              data=grid.label(), network=config.describe(), results=entries),
                         '\n'.join(lines) + '\n')


# --- calibration ---------------------------------------------------------------------------

CALIBRATION_FIELDS = ('network', 'depth', 'seed', 'last_step', 'last_error', 'best_step',
                      'best_error', 'best_validation_accuracy', 'temperature', 'ece', 'ece_scaled',
                      'nll', 'nll_scaled', 'brier', 'brier_scaled')


def calibration_row(run, results):
    """One run's figures from its evaluated last and best checkpoints."""
    last = evaluate.final(results)
    best = next((r for r in results if r.which == 'best'), last)
    before, after = last.metrics.calibration, last.scaled
    return dict(run.labels, network=run.model_config.describe(), last_step=last.step,
                last_error=last.metrics.error, best_step=best.step, best_error=best.metrics.error,
                best_validation_accuracy=best.validation_accuracy, temperature=after.temperature,
                ece=before.ece, ece_scaled=after.ece, nll=before.nll, nll_scaled=after.nll,
                brier=before.brier, brier_scaled=after.brier)


def calibration(grid, base, depths):
    """calibration: last against best-on-validation test error, and the calibration before
    and after temperature scaling, of every depth and seed; writes calibration.*."""
    if not grid.recipe.validation_split:
        raise UserError('calibration: the recipe holds out no validation images, which choose '
                        'the best checkpoint and fit the temperature; add --validation_split=N',
                        settings=('validation_split',))
    grid.check_work_dir(grid.spec(base))
    runs = grid.depth_runs(base, depths)
    rows = []
    for i, run in enumerate(runs, 1):
        grid.train(run, i, len(runs))
        rows.append(calibration_row(run, grid.evaluated(run, temperature_scaling=True)))
    lines = ['Test-set figures (mean ± std over seeds %s) after %d iterations; %s. Last: the '
             'final checkpoint; best: the one of the highest validation accuracy. ECE over 15 '
             'equal-width bins, NLL and Brier of the last checkpoint, before and after a '
             'temperature fitted on the validation images.'
             % (', '.join(map(str, grid.seeds)), grid.recipe.num_iterations, grid.label()), '',
             '| network | last: test error | best: test error | best at step | temperature | '
             'ECE before → after | NLL before → after | Brier before → after |',
             '|---|---:|---:|---:|---:|---:|---:|---:|']
    entries = []
    for depth in depths:
        mine = [r for r in rows if r['depth'] == depth]
        column = {f: [r[f] for r in mine] for f in CALIBRATION_FIELDS[3:]}
        entries.append(dict(network=mine[0]['network'], depth=depth, runs=len(mine),
                            **{f: dict(zip(('mean', 'std'), mean_std(v)), per_seed=v)
                               for f, v in column.items()}))
        lines.append('| %s | %s | %s | %s | %s | %s → %s | %s → %s | %s → %s |' % (
            mine[0]['network'], percent(column['last_error']), percent(column['best_error']),
            '/'.join(str(s) for s in column['best_step']), number(column['temperature'], 2),
            percent(column['ece']), percent(column['ece_scaled']), number(column['nll']),
            number(column['nll_scaled']), number(column['brier']), number(column['brier_scaled'])))
    return write_results(grid.out, 'calibration', rows, list(CALIBRATION_FIELDS),
                         dict(recipe=json.loads(grid.recipe.to_json()), seeds=grid.seeds,
                              data=grid.label(), results=entries), '\n'.join(lines) + '\n')


# --- architecture --------------------------------------------------------------------------

def architecture(out):
    from v2.tools import anatomy
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, 'architecture.json')
    with open(path, 'w') as f:
        json.dump(anatomy.describe(model.ModelConfig(num_layers=20)), f, indent=1)
    print('wrote %s' % path)
    return path


COMMANDS = ('figure6', 'table', 'switches', 'calibration', 'architecture')


def main(argv):
    """Reads the flags of the command named in argv into a Grid and runs the command."""
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise UserError('expected one command, %s (e.g. python -m v2.tools.experiments figure6 '
                        '--flagfile=configs/figure6.flags --data_path=D)'
                        % ' or '.join(COMMANDS))
    command = argv[1]
    if command == 'architecture':
        written = architecture(FLAGS.out)
    else:
        grid = read_grid(command)
        if command == 'switches':
            if FLAGS['depths'].present:
                raise UserError('--depths: switches trains one network; give --num_layers')
            chosen = list(FLAGS.switches) or list(SWITCHES)
            unknown = [s for s in chosen if s not in SWITCHES]
            if unknown:
                raise UserError('--switches=%s: expected some of %s'
                                % (','.join(chosen), ','.join(SWITCHES)))
            written = switches(grid, flags.model_config(), chosen)
        else:
            depths = list(flags.numbers('depths', int, at_least_one=True))
            base = check_depths(depths)
            if command == 'table':
                written = table(grid, base, depths)
            elif command == 'calibration':
                written = calibration(grid, base, depths)
            else:
                networks = list(FLAGS.networks)
                if not networks or set(networks) - set(NETWORKS):
                    raise UserError('--networks=%s: expected plain, resnet or both'
                                    % ','.join(networks))
                written = figure6(grid, base, depths, networks, FLAGS.reference,
                                  FLAGS.previous)
    if FLAGS.plot and command in ('figure6', 'architecture'):
        from v2.tools import figures
        figures.draw(written, FLAGS.out)
    return 0


def run():
    """The console entry point and python -m."""
    app.run(main, flags.EXPERIMENTS)


if __name__ == '__main__':
    run()
