"""The figures in files/, drawn from the CSV/JSON the experiments write (no training here).

  python -m v2.tools.figures files/figure6.csv files/architecture.json --out=files

(this redraws, and so overwrites, the committed PNGs in files/; --out=results keeps them).

Needs matplotlib, an optional dependency: pip install matplotlib (or
pip install .[figures]). Kept apart from v2.experiments so that a figure can be
redrawn, restyled or checked without training anything.
"""

import csv
import json
import os
import statistics
import textwrap

from v2.cli import app
from v2.errors import UserError
from v2.evaluation import reliability
from v2.tools import flags

# Depth -> colour, the same in both panels so that depths can be compared across them.
COLOURS = {20: '#e6a100', 32: '#2c7bb6', 44: '#1a9641', 56: '#d7191c', 110: '#7b3294'}


def pyplot():
    """pyplot (v2.evaluation.reliability), or one line saying how to draw the figures later."""
    return reliability.pyplot(later='the CSV/JSON are written; draw them later with python -m '
                                    'v2.tools.figures')


def read_points(path):
    """Rows of a figure6 CSV with numbers as numbers."""
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UserError('%s: cannot read it (%s)' % (path, e.strerror)) from None
    try:
        return [dict(r, depth=int(r['depth']), seed=int(r['seed']), step=int(r['step']),
                     error=float(r['error'])) for r in rows]
    except (KeyError, ValueError, TypeError):
        raise UserError('%s: not a figure6 CSV (network, depth, seed, step, split, error)'
                        % path) from None


def mean_curves(rows, network, split):
    """{depth: (steps, mean, lowest, highest error in %)} over the seeds, of one network
    and split."""
    curves = {}
    for depth in sorted({r['depth'] for r in rows if r['network'] == network}):
        by_step = {}
        for r in rows:
            if (r['network'], r['depth'], r['split']) == (network, depth, split):
                by_step.setdefault(r['step'], []).append(100 * r['error'])
        steps = sorted(by_step)
        curves[depth] = (steps, [statistics.mean(by_step[s]) for s in steps],
                         [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps])
    return curves


def figure6(csv_path, out):
    """<out>/<name>.png: both panels of He et al. 2015, Figure 6, from a figure6 CSV.

    Left the plain nets, right the ResNets, as in the paper; thin dashed lines are
    the training error (the mean over each recording window of the augmented
    training batches), bold lines the test error. Lines are means over the seeds,
    the shaded band around each test line spans the lowest to the highest seed,
    each depth is one colour in both panels, and the panels share the error axis.
    """
    plt = pyplot()
    rows = read_points(csv_path)
    if not rows:
        raise UserError('%s: holds no points' % csv_path)
    seeds = len({r['seed'] for r in rows})
    seeds_of = {}
    for r in rows:
        seeds_of.setdefault((r['network'], r['depth']), set()).add(r['seed'])
    top = min(100.0, 5 * (int(max(100 * r['error'] for r in rows) / 5) + 1))
    networks = [n for n in ('plain', 'resnet') if any(r['network'] == n for r in rows)]
    fig, axes = plt.subplots(1, len(networks), figsize=(5.0 * len(networks), 4.0), dpi=120,
                             sharey=True, squeeze=False)
    for ax, network in zip(axes[0], networks):
        title = 'plain' if network == 'plain' else 'ResNet'
        for split, style, width in (('train', '--', 1.0), ('test', '-', 2.2)):
            for depth, (steps, errors, low, high) in mean_curves(rows, network, split).items():
                colour = COLOURS.get(depth, 'black')
                ran = sorted(seeds_of[network, depth])
                ax.plot(steps, errors, style, linewidth=width, color=colour,
                        label='%s-%d (%s)' % (title, depth, seed_label(ran))
                        if split == 'test' else None)
                if split == 'test' and len(ran) > 1:
                    ax.fill_between(steps, low, high, color=colour, alpha=0.15, linewidth=0)
        ax.set_xlabel('iterations')
        ax.set_ylim(0, top)
        ax.grid(alpha=0.3)
        ax.set_title('plain nets' if network == 'plain' else 'ResNets', fontsize=10)
        ax.legend(loc='upper right', fontsize=8)
    axes[0][0].set_ylabel('error (%)')
    same = len({frozenset(s) for s in seeds_of.values()}) == 1
    fig.suptitle(textwrap.fill(figure6_title(csv_path, seeds if same else None),
                               72 * len(networks)), fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, os.path.splitext(os.path.basename(csv_path))[0] + '.png')
    fig.savefig(path)
    plt.close(fig)
    return [path]


def seed_label(seeds):
    """'seed 1', 'seeds 1-3', 'seeds 1, 3': the seeds of one line of the figure."""
    if len(seeds) == 1:
        return 'seed %d' % seeds[0]
    if seeds == list(range(seeds[0], seeds[-1] + 1)):
        return 'seeds %d-%d' % (seeds[0], seeds[-1])
    return 'seeds ' + ', '.join(map(str, seeds))


def figure6_title(csv_path, seeds):
    """The line over both panels (seeds: of every line, or None where they differ);
    figure6 --reference's figure says that Keras trained it."""
    keras = 'reference' in os.path.basename(csv_path)
    return '%s%s; dashed: training error, bold: test error%s' % (
        'Keras 3 model of the same nets: ' if keras else '',
        'mean of %d seed%s' % (seeds, 's' if seeds > 1 else '') if seeds
        else 'mean over the seeds each line names', ' (shaded: lowest to highest seed)'
        if seeds is None or seeds > 1 else '')


def architecture(json_path, out):
    """<out>/architecture.png: the parts of the net with shapes, and the first unit of each stage.

    Each unit is drawn as the graph has it: ops both paths share on top, the
    residual branch on the left, the shortcut on the right (identity when empty),
    the addition, then any op on the sum.
    """
    plt = pyplot()
    with open(json_path) as f:
        net = json.load(f)
    units = net['units']
    width = 4.4 + 3.2 * len(units)
    fig = plt.figure(figsize=(width, 7.0), dpi=110)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(0, 10)
    ax.axis('off')

    def box(x, y, text, colour, size=8):
        ax.text(x, y, text, ha='center', va='center', fontsize=size,
                bbox=dict(boxstyle='round,pad=0.35', facecolor=colour, edgecolor='#445566'))

    def arrow(start, end, gap=0.22):
        (x0, y0), (x1, y1) = start, end
        ax.annotate('', xy=(x1, y1 + gap), xytext=(x0, y0 - gap),
                    arrowprops=dict(arrowstyle='->', color='#445566'))

    ax.text(2.2, 9.6, '%s: %s parameters' % (net['name'], format(net['parameters'], ',')),
            ha='center', fontsize=10, weight='bold')
    rows = [('input image', '32x32x3')] + [
        (p['name'] + (' (%d units)' % p['units'] if p['units'] else ''),
         'x'.join(str(d) for d in p['shape']) + ', %s params' % format(p['parameters'], ','))
        for p in net['parts']]
    ys = [8.9 - i * (8.2 / max(1, len(rows) - 1)) for i in range(len(rows))]
    for i, ((name, detail), y) in enumerate(zip(rows, ys)):
        box(2.2, y, '%s\n%s' % (name, detail), '#f5e6cc' if 'stage' in name else '#dde8f5')
        if i:
            arrow((2.2, ys[i - 1]), (2.2, y), 0.3)

    step = 0.62
    for k, unit in enumerate(units):
        x = 5.6 + 3.2 * k
        left, right = x - 0.6, x + 0.9
        ax.text(x, 9.55, 'first unit of stage %d' % unit['stage'], ha='center', fontsize=9,
                weight='bold')
        y = 9.0
        box(x, y, 'input %s' % 'x'.join(str(d) for d in unit['input_shape']), 'white', 7)
        split = (x, y)
        for label in unit['shared']:
            arrow(split, (x, y - step))
            y -= step
            box(x, y, label, '#e8f0e0', 7)
            split = (x, y)
        last = split
        for label in unit['branch']:
            y -= step
            column = left if unit['residual'] else x
            arrow(last, (column, y))
            box(column, y, label, '#e8f0e0', 7)
            last = (column, y)
        if unit['residual']:
            sy, previous = split[1], split
            for label in unit['shortcut'] or ['identity']:
                sy -= step
                arrow(previous, (right, sy))
                box(right, sy, label, '#f5dde0', 7)
                previous = (right, sy)
            y -= step
            arrow(last, (x, y), 0.2)
            arrow(previous, (x, y), 0.2)
            ax.text(x, y, '+', ha='center', va='center', fontsize=14, weight='bold')
            last = (x, y)
        for label in unit['after']:
            y -= step
            arrow(last, (x, y))
            box(x, y, label, '#e8f0e0', 7)
            last = (x, y)
        shape = next(p['shape'] for p in net['parts'] if p['name'] == 'stage %d' % unit['stage'])
        arrow(last, (x, y - step))
        box(x, y - step, 'output %s' % 'x'.join(str(d) for d in shape), 'white', 7)
    ax.text(width - 0.2, 0.25, 'drawn from the traced model by python -m v2.tools.experiments '
            'architecture; the other units of a stage have stride 1 and identity shortcuts',
            ha='right', fontsize=7, color='#667788')
    path = os.path.join(out, 'architecture.png')
    fig.savefig(path)
    plt.close(fig)
    return [path]


def draw(path, out):
    """Draws whatever figure the file at `path` holds the data of; returns the PNGs' paths."""
    os.makedirs(out, exist_ok=True)
    name = os.path.basename(path)
    if name.endswith('.csv') and name.startswith('figure6'):
        written = figure6(path, out)
    elif name.endswith('.json'):
        written = architecture(path, out)
    else:
        raise UserError('%s: expected a figure6 .csv or an architecture .json' % path)
    for png in written:
        print('drew %s' % png)
    return written


def main(argv):
    if len(argv) < 2:
        raise UserError('give the CSV/JSON files to draw (e.g. files/figure6.csv)')
    for path in argv[1:]:
        draw(path, flags.FLAGS.out)
    return 0


def run():
    """The console entry point and python -m."""
    app.run(main, flags.FIGURES)


if __name__ == '__main__':
    run()
