"""The absl flags shared by run_trainer.py and run_evaluator.py.

Importing this module defines the shared flags once; each script adds its own.
`run` and `parse_flags` (from v2.cli) are re-exported for the scripts.
"""

import dataclasses

from absl import flags

from v2 import data, layers, model, precision
from v2.cli import parse_flags, run  # noqa: F401  (re-exported for the scripts)
from v2.errors import UserError

FLAGS = flags.FLAGS

flags.DEFINE_string('data_path', None,
                    'Folder of the binary files. Default: what the official archive extracts to, '
                    'cifar-10-batches-bin (CIFAR-10) or cifar-100-binary (CIFAR-100).')
flags.DEFINE_alias('path', 'data_path')
flags.DEFINE_enum('dataset', 'cifar10', ['cifar10', 'cifar100'], 'The data set.')
flags.DEFINE_boolean('coarse_labels', False,
                     'CIFAR-100 only: train on the 20 superclasses instead of the 100 classes.')
flags.DEFINE_enum('model', 'resnet', list(model.MODELS),
                  'Network family: CIFAR ResNet (He et al. 2015/2016), wide ResNet (Zagoruyko & '
                  'Komodakis 2016), VGG with batch norm, ImageNet ResNet adapted to 32x32.')
flags.DEFINE_integer('num_layers', None,
                     'Depth. resnet: 6n+2 (20, 32, 44, 56, 110, 1202), 9n+2 with --bottleneck '
                     '(164, 1001); wide_resnet: 6n+4 (16, 28, 40); vgg: 11, 13, 16, 19; '
                     'imagenet_resnet: 18, 34, 50, 101, 152. Default: 110, 164, 28, 16, 18.')
flags.DEFINE_enum('resnet_version', '2', ['1', '2'],
                  '1: post-activation units (He et al. 2015); 2: pre-activation (He et al. 2016).')
flags.DEFINE_boolean('bottleneck', False,
                     'resnet: 1x1-3x3-1x1 bottleneck units (ResNet-164, ResNet-1001).')
flags.DEFINE_enum('shortcut_type', None, list(layers.SHORTCUT_TYPES),
                  'A: zero-padded identity (average-pool subsampling), A_subsample: the same '
                  'with strided subsampling, B: 1x1 projection where the shape changes, C: '
                  'projection on every unit. Default: what the family\'s paper used (A for '
                  'resnet, B for bottleneck resnet, wide_resnet and imagenet_resnet).')
flags.DEFINE_boolean('shortcut_connections', True,
                     'Add the shortcuts; False gives the plain net of He et al. 2015, Figure 6.')
flags.DEFINE_integer('widen_factor', 1, 'wide_resnet: k of WRN-d-k.', lower_bound=1)
flags.DEFINE_float('dropout_rate', 0.0, 'Dropout between the convs of basic units (WRN).',
                   lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_integer('eval_batch_size', 500, 'Images per evaluation batch.', lower_bound=1)
flags.DEFINE_enum('precision', 'float32', list(precision.PRECISIONS),
                  'Compute precision of the activations (variables and batch-norm statistics stay '
                  'float32): bfloat16 for CPUs with bf16 units, TPUs and recent GPUs; float16 for '
                  'GPUs, with dynamic loss scaling.')

# Flags that do not apply to a family, refused when given explicitly.
NOT_FOR = {
    'vgg': ('resnet_version', 'bottleneck', 'shortcut_type', 'shortcut_connections',
            'widen_factor', 'dropout_rate'),
    'imagenet_resnet': ('bottleneck', 'widen_factor'),
    'resnet': ('widen_factor',),
    'wide_resnet': ('bottleneck',),
}
ARCHITECTURE_FLAGS = ('model', 'num_layers', 'resnet_version', 'bottleneck', 'shortcut_type',
                      'shortcut_connections', 'widen_factor', 'dropout_rate', 'dataset',
                      'coarse_labels')


def _dataset_name():
    if FLAGS.coarse_labels:
        if FLAGS.dataset != 'cifar100':
            raise UserError('--coarse_labels applies to --dataset=cifar100 only')
        return 'cifar100_coarse'
    return FLAGS.dataset


def architecture_values():
    """The ModelConfig fields the architecture flags give, explicit or default."""
    dataset = _dataset_name()
    return dict(model=FLAGS.model, num_layers=FLAGS.num_layers,
                resnet_version=int(FLAGS.resnet_version), bottleneck=FLAGS.bottleneck,
                shortcut_type=FLAGS.shortcut_type,
                shortcut_connections=FLAGS.shortcut_connections,
                widen_factor=FLAGS.widen_factor, dropout_rate=FLAGS.dropout_rate,
                dataset=dataset, num_classes=data.DATASETS[dataset].num_classes)


def _check_applicable():
    """Refuses a flag set explicitly for a family it means nothing to, in one line."""
    for name in NOT_FOR.get(FLAGS.model, ()):
        if FLAGS[name].present:
            raise UserError('--%s does not apply to --model=%s' % (name, FLAGS.model))
    if FLAGS['shortcut_type'].present and not FLAGS.shortcut_connections:
        raise UserError('--shortcut_type=%s makes no sense with --shortcut_connections=false '
                        '(the plain net has no shortcuts)' % FLAGS.shortcut_type)


def model_config():
    """The ModelConfig the flags describe (the trainer's; every field counts)."""
    _check_applicable()
    return model.ModelConfig(**architecture_values())


def explicit_architecture():
    """The ModelConfig fields the user set on the command line or in a flag file."""
    _check_applicable()
    values = architecture_values()
    fields = {f.name for f in dataclasses.fields(model.ModelConfig)}
    given = {name for name in ARCHITECTURE_FLAGS if FLAGS[name].present}
    if given & {'dataset', 'coarse_labels'}:
        given |= {'dataset', 'num_classes'}
    return {k: v for k, v in values.items() if k in given and k in fields}


def data_path(config):
    """--data_path, or the folder the data set's official archive extracts to."""
    return FLAGS.data_path or data.DATASETS[config.dataset].folder
