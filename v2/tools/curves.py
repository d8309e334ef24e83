"""The training curves of one or several runs, drawn from their metrics.csv to one PNG.

  python -m v2.tools.curves runs/a runs/b --png=curves.png

Each argument is a run's checkpoint folder (its logs/metrics.csv), its log folder, or
the CSV itself. Left: the error in percent, of the training windows (thin) and of the
evaluations (bold: validation or test, as the run evaluated), in the style of He et
al. 2015, Figure 6. Right: the training loss (thin) and the evaluation cross-entropy
(bold). Needs matplotlib, as the other figures do; no TensorBoard.
"""

import os

from v2.cli import app
from v2.errors import UserError
from v2.evaluation import evaluate
from v2.tools import figures, flags
from v2.training import record

COLOURS = ('#2c7bb6', '#d7191c', '#1a9641', '#e6a100', '#7b3294', '#444444')


def find_csv(path):
    """The metrics.csv that a run folder, a log folder or a CSV path names."""
    for candidate in (path, os.path.join(path, record.FILE),
                      os.path.join(path, 'logs', record.FILE)):
        if os.path.isfile(candidate):
            return candidate
    raise UserError('%s: no %s there, in it or in its logs/ (train a run into it first)'
                    % (path, record.FILE))


def label_of(path):
    """A run's name in the legend: its folder (above logs/, and above ckpt/ where the
    run's checkpoints are in a folder of that name)."""
    folder = os.path.dirname(os.path.abspath(path))
    for generic in ('logs', 'ckpt'):
        if os.path.basename(folder) == generic:
            folder = os.path.dirname(folder)
    return os.path.basename(folder)


def draw(paths, png, title=None):
    """Draws the runs' curves to png; returns what was drawn, {label: rows}."""
    runs = {}
    for path in paths:
        csv_path = find_csv(path)
        label = label_of(csv_path)
        while label in runs:
            label += "'"
        runs[label] = record.read(csv_path)
        if not runs[label]:
            raise UserError('%s: no rows yet' % csv_path)
    evaluate.check_writable(png, 'png')
    plt = figures.pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for colour, (label, rows) in zip(COLOURS * len(runs), runs.items()):
        for split in ('train', 'validation', 'test'):
            chosen = [r for r in rows if r['split'] == split]
            if not chosen:
                continue
            steps = [r['step'] for r in chosen]
            bold = split != 'train'
            style = dict(color=colour, lw=2.0 if bold else 0.8, alpha=1.0 if bold else 0.7,
                         label='%s, %s' % (label, split))
            left.plot(steps, [100 * r['error'] for r in chosen], **style)
            loss = 'cross_entropy' if bold else 'loss'
            right.plot(steps, [r[loss] for r in chosen], **style)
    left.set(xlabel='step', ylabel='error (%)', ylim=(0, None))
    right.set(xlabel='step', ylabel='loss (thin: training; bold: evaluation cross-entropy)')
    left.legend(fontsize=7)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(title or ', '.join(runs), fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return runs


def main(argv):
    if len(argv) < 2:
        raise UserError('give the runs to draw: checkpoint folders, log folders or metrics.csv '
                        'files')
    draw(argv[1:], flags.FLAGS.png, flags.FLAGS.title)
    print('drew %s' % flags.FLAGS.png)
    return 0


def run():
    """The console entry point (cifar-curves) and python -m."""
    app.run(main, flags.CURVES)


if __name__ == '__main__':
    run()
