"""The networks the papers report, with their parameter counts and compute: `python -m
v2.tools.catalog`.

Prints a Markdown table (the one in README.md) of every network below, built here
and counted, beside the figure its paper gives, with its multiply-adds per image
(model.multiply_adds: convolutions and linear layers, one multiply-add counted once).
The paper figures are facts from the papers; the counts are computed, never typed.
PAPER_ERRORS holds the CIFAR-10 test errors the papers report, which the experiments'
tables print beside ours.
"""

import sys

from v2.nets import model

C = model.ModelConfig
HE2015 = 'He et al. 2015, Table 6'
HE2016 = 'He et al. 2016, Table 6'
WRN = 'Zagoruyko & Komodakis 2016, Table 4'
VGG = 'CIFAR VGG-BN of the public implementations'
IMAGENET = 'He et al. 2015, Table 1 (32x32 stem, 10 classes)'

# (config, the paper's figure in millions as printed, where it comes from). The
# figures count all trainable parameters, except those in WEIGHTS_ONLY.
PAPER_NETWORKS = [
    (C(num_layers=20), '0.27', HE2015),
    (C(num_layers=32), '0.46', HE2015),
    (C(num_layers=44), '0.66', HE2015),
    (C(num_layers=56), '0.85', HE2015),
    (C(num_layers=110), '1.7', HE2015),
    (C(num_layers=1202), '19.4', HE2015),
    (C(num_layers=164, bottleneck=True), '1.7', HE2016),
    (C(num_layers=1001, bottleneck=True), '10.2', HE2016),
    (C('wide_resnet', 40, widen_factor=4), '8.9', WRN),
    (C('wide_resnet', 16, widen_factor=8), '11.0', WRN),
    (C('wide_resnet', 28, widen_factor=10), '36.5', WRN),
    (C('vgg', 11), '9.2', VGG),
    (C('vgg', 13), '9.4', VGG),
    (C('vgg', 16), '14.7', VGG),
    (C('vgg', 19), '20.0', VGG),
    (C('imagenet_resnet', 18, resnet_version=1), '11.2', IMAGENET),
    (C('imagenet_resnet', 34, resnet_version=1), '21.3', IMAGENET),
    (C('imagenet_resnet', 50, resnet_version=1), '23.5', IMAGENET),
    (C('imagenet_resnet', 101, resnet_version=1), '42.5', IMAGENET),
]

# CIFAR-10 test error (%) as the papers report it, by ModelConfig.describe() of the
# net they trained: He et al. 2015's are post-activation nets (v1) with option A;
# He et al. 2016's and the wide ResNets are pre-activation nets.
PAPER_ERRORS = {
    'ResNet-20 v1': (8.75, HE2015), 'ResNet-32 v1': (7.51, HE2015),
    'ResNet-44 v1': (7.17, HE2015), 'ResNet-56 v1': (6.97, HE2015),
    'ResNet-110 v1': (6.43, HE2015), 'ResNet-1202 v1': (7.93, HE2015),
    'ResNet-110': (6.37, 'He et al. 2016, Table 2'),
    'ResNet-164 bottleneck': (5.46, 'He et al. 2016, Table 2'),
    'ResNet-1001 bottleneck': (4.92, 'He et al. 2016, Table 3'),
    'WRN-40-4': (4.97, WRN), 'WRN-16-8': (4.81, WRN), 'WRN-28-10': (4.17, WRN),
}

# Multiply-adds per CIFAR image as published ("FLOPs" there, one multiply-add counted once):
# Li et al. 2017, "Pruning Filters for Efficient ConvNets", Tables 1 and 2.
PAPER_MULTIPLY_ADDS = {'ResNet-56': 1.25e8, 'ResNet-110': 2.53e8, 'VGG-16': 3.13e8}

# He et al. 2016's 10.2M for ResNet-1001 is its conv and linear weights alone; with
# batch norm's scales and offsets and the bias, the net has 10.33M.
WEIGHTS_ONLY = {'ResNet-1001 bottleneck'}


def paper_count(net):
    """The count the paper's figure is of: all trainable scalars, or the weights only."""
    if net.config.describe() in WEIGHTS_ONLY:
        return sum(int(w.shape.num_elements()) for w in model.decayed_weights(net))
    return model.count_parameters(net)


def flags_for(config):
    """The run_trainer.py flags that build `config` (defaults left out)."""
    default = C(model=config.model)
    out = [] if config.model == 'resnet' else ['--model=%s' % config.model]
    out.append('--num_layers=%d' % config.num_layers)
    if config.model != 'vgg':
        if config.resnet_version != 2:
            out.append('--resnet_version=%d' % config.resnet_version)
        if config.bottleneck and config.model == 'resnet':
            out.append('--bottleneck')
        if config.widen_factor != default.widen_factor:
            out.append('--widen_factor=%d' % config.widen_factor)
    return ' '.join(out)


def compute(multiply_adds):
    """41M, 125M, 2.6G: multiply-adds, rounded."""
    if multiply_adds >= 1e9:
        return '%.1fG' % (multiply_adds / 1e9)
    return '%.0fM' % (multiply_adds / 1e6)


def table():
    """The Markdown table of PAPER_NETWORKS."""
    rows = ['| network | flags | shortcut | trainable parameters | paper | multiply-adds | '
            'source |', '|---|---|---|---:|---:|---:|---|']
    notes = []
    for config, paper, source in PAPER_NETWORKS:
        net = model.build(config)
        mark = ''
        if config.describe() in WEIGHTS_ONLY:
            mark = '*'
            notes.append('\\* The paper\'s figure counts the conv and linear weights only: %s here.'
                         % format(paper_count(net), ','))
        rows.append('| %s | `%s` | %s | %s | %sM%s | %s | %s |'
                    % (config.describe(), flags_for(config), config.shortcut_type or '-',
                       format(model.count_parameters(net), ','), paper, mark,
                       compute(model.multiply_adds(net)), source))
    return '\n'.join(rows + [''] + notes)


def main(argv):
    """Prints the table; it takes no flags and no arguments."""
    from v2.errors import UserError
    if len(argv) > 1:
        raise UserError('unexpected arguments: %s (the catalog takes none)' % ' '.join(argv[1:]))
    sys.stdout.write(table() + '\n')
    return 0


def run():
    """python -m v2.tools.catalog: any flag but absl's is refused in one line."""
    from v2.cli import app
    from v2.tools import flags
    app.run(main, flags.CATALOG)


if __name__ == '__main__':
    run()
