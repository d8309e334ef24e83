"""The reliability diagram of an evaluated checkpoint (the evaluator's --reliability_png).

Per confidence bin of the ECE, the accuracy against the mean confidence (the
diagonal where calibrated), and with temperature scaling the same after it beside.
It is drawn with matplotlib, an optional dependency: pyplot() imports it only when a
figure is drawn, so the library loads without it, and refuses in one line where it
is missing (the evaluator asks before it evaluates anything).
"""

import os

from v2.errors import UserError


def pyplot(later=''):
    """matplotlib's pyplot drawing to files, or a one-line error naming the install (and
    `later`: how the figure can be drawn afterwards, where the caller has a way)."""
    try:
        import matplotlib
    except ImportError:
        raise UserError('the figures need matplotlib, which is not installed: pip install '
                        'matplotlib' + (' (%s)' % later if later else '')) from None
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def draw(result, path):
    """Draws the reliability diagram of one evaluated checkpoint (v2.evaluation.evaluate.
    Result) to the PNG `path`; returns the path."""
    plt = pyplot()
    panels = [('as trained', result.metrics.calibration)]
    if result.scaled:
        panels.append(('after temperature scaling, T = %.2f' % result.scaled.temperature,
                       result.scaled))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (title, c) in zip(axes[0], panels):
        bins = len(c.bin_count)
        edges = [i / bins for i in range(bins)]
        filled = [n > 0 for n in c.bin_count]
        ax.bar([e for e, f in zip(edges, filled) if f],
               [a for a, f in zip(c.bin_accuracy, filled) if f], width=1 / bins, align='edge',
               color='#2c7bb6', edgecolor='white', label='accuracy')
        ax.bar([e for e, f in zip(edges, filled) if f],
               [m - a for m, a, f in zip(c.bin_confidence, c.bin_accuracy, filled) if f],
               bottom=[a for a, f in zip(c.bin_accuracy, filled) if f], width=1 / bins,
               align='edge', color='#d7191c', alpha=0.3, label='gap to the mean confidence')
        ax.plot([0, 1], [0, 1], color='#444444', lw=1, ls='--')
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel='confidence (top softmax probability)',
               ylabel='accuracy', title=title)
        ax.text(0.03, 0.93, 'ECE %.2f%%  NLL %.3f  Brier %.3f' % (100 * c.ece, c.nll, c.brier),
                fontsize=8, transform=ax.transAxes)
        ax.legend(loc='lower right', fontsize=7)
    fitted = (', T fitted on %d validation images' % result.validation_images
              if result.scaled else '')
    fig.suptitle('%s, step %s: %d test images, %d equal-width bins%s'
                 % (os.path.basename(result.prefix), result.step,
                    result.metrics.num_examples, len(result.metrics.calibration.bin_count),
                    fitted), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
