"""Every network of the three papers (and two baselines), built from one ModelConfig.

Families (`model`):
  resnet           CIFAR ResNets of He et al. 2015 (post-activation, --resnet_version=1)
                   and 2016 (pre-activation, the default): 6n+2 layers with basic
                   units, 9n+2 with bottlenecks; stages of 16/32/64 (x4 for bottlenecks).
  wide_resnet      WRN-d-k of Zagoruyko & Komodakis 2016: pre-activation basic units,
                   widths 16k/32k/64k, (d-4)/6 units a stage, optional dropout.
  vgg              VGG-11/13/16/19 with batch norm, for 32x32 images.
  imagenet_resnet  ResNet-18/34/50/101/152 of He et al. 2015 (or the pre-activation
                   versions) with a 3x3 stem and no max-pool, for 32x32 images.

One constructor per family (cifar_resnet, wide_resnet, vgg, imagenet_resnet) builds
a net in one call; build(config) does the same from a ModelConfig.
"""

import dataclasses
import json

import tensorflow as tf

from v2.errors import UserError
from v2.nets import layers, resnet
from v2.nets.vgg import CONFIGS as VGG_CONFIGS
from v2.nets.vgg import VGG

MODELS = ('resnet', 'wide_resnet', 'vgg', 'imagenet_resnet')
CIFAR_WIDTHS = (16, 32, 64)
# He et al. 2015, Table 1: units per stage of the ImageNet ResNets.
IMAGENET_STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3),
                   152: (3, 8, 36, 3)}
IMAGENET_WIDTHS = (64, 128, 256, 512)
# The shortcut option each paper used, taken when --shortcut_type is not given.
PAPER_SHORTCUT = {'resnet': 'A', 'resnet_bottleneck': 'B', 'wide_resnet': 'B',
                  'imagenet_resnet': 'B'}
DEFAULT_DEPTH = {'resnet': 110, 'resnet_bottleneck': 164, 'wide_resnet': 28, 'vgg': 16,
                 'imagenet_resnet': 18}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Everything that fixes the network; stored in every checkpoint as JSON.

    Fields that do not apply to a family keep their defaults. shortcut_type None
    means the option the family's paper used (see PAPER_SHORTCUT); num_layers None
    the family's usual depth.
    """
    model: str = 'resnet'
    num_layers: int | None = None
    resnet_version: int = 2
    bottleneck: bool = False
    shortcut_type: str | None = None
    shortcut_connections: bool = True
    widen_factor: int = 1
    dropout_rate: float = 0.0
    num_classes: int = 10
    dataset: str = 'cifar10'
    strided_padding: str = 'symmetric'   # see layers.STRIDED_PADDINGS

    def __post_init__(self):
        key = 'resnet_bottleneck' if (self.model == 'resnet' and self.bottleneck) else self.model
        if self.num_layers is None and self.model in MODELS:
            object.__setattr__(self, 'num_layers', DEFAULT_DEPTH[key])
        if self.model == 'imagenet_resnet' and self.num_layers in IMAGENET_STAGES:
            object.__setattr__(self, 'bottleneck', self.num_layers >= 50)
        if self.shortcut_type is None and self.model != 'vgg':
            object.__setattr__(self, 'shortcut_type', PAPER_SHORTCUT.get(key, 'A'))
        validate(self)

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text):
        """The config a checkpoint stores; one from before strided_padding existed was
        trained with TensorFlow's 'SAME' padding, and keeps it."""
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in json.loads(text).items() if k in fields}
        values.setdefault('strided_padding', 'tf_same')
        return cls(**values)

    def describe(self):
        """A short human name: ResNet-110, plain-56, PreAct-ResNet-164, WRN-28-10, VGG-16..."""
        d = self.num_layers
        if self.model == 'vgg':
            return 'VGG-%d' % d
        if self.model == 'wide_resnet':
            name = 'WRN-%d-%d' % (d, self.widen_factor)
        elif self.model == 'imagenet_resnet':
            name = '%sResNet-%d (ImageNet layout)' % ('PreAct-' if self.resnet_version == 2
                                                       else '', d)
        else:
            name = 'ResNet-%d' % d
            if self.bottleneck:
                name += ' bottleneck'
            if self.resnet_version == 1:
                name += ' v1'
        if not self.shortcut_connections:       # the plain twin: plain-56, plain WRN-16-4
            name = name.replace('ResNet', 'plain') if 'ResNet' in name else 'plain ' + name
        return name

    def slug(self):
        """A file-name form of describe(), for default folders: resnet110, wrn-28-10, ..."""
        return (self.describe().lower().replace(' (imagenet layout)', '-imagenet')
                .replace('resnet-', 'resnet').replace(' ', '-'))


def validate(config):
    """Raises UserError, naming the setting, for a depth or combination that makes no sense."""
    c = config
    if c.model not in MODELS:
        raise UserError('model=%s: expected one of %s' % (c.model, '|'.join(MODELS)),
                        settings=('model',))
    if c.resnet_version not in (1, 2):
        raise UserError('resnet_version=%s: expected 1 (He et al. 2015) or 2 (He et al. 2016)'
                        % c.resnet_version, settings=('resnet_version',))
    if c.shortcut_type is not None and c.shortcut_type not in layers.SHORTCUT_TYPES:
        raise UserError('shortcut_type=%s: expected one of %s'
                        % (c.shortcut_type, '|'.join(layers.SHORTCUT_TYPES)),
                        settings=('shortcut_type',))
    if not 0.0 <= c.dropout_rate < 1.0:
        raise UserError('dropout_rate=%s: expected a rate in [0, 1)' % c.dropout_rate,
                        settings=('dropout_rate',))
    if c.widen_factor < 1:
        raise UserError('widen_factor=%s: expected a whole number >= 1' % c.widen_factor,
                        settings=('widen_factor',))
    if c.strided_padding not in layers.STRIDED_PADDINGS:
        raise UserError('strided_padding=%s: expected one of %s'
                        % (c.strided_padding, '|'.join(layers.STRIDED_PADDINGS)),
                        settings=('strided_padding',))
    units_per_stage(c)


def units_per_stage(config):
    """Units in each stage (n) for a CIFAR or wide ResNet; checks every family's depth."""
    c, d = config, config.num_layers
    if c.model == 'vgg':
        if d not in VGG_CONFIGS:
            raise UserError('num_layers=%d: VGG comes in depths %s'
                            % (d, ', '.join(map(str, VGG_CONFIGS))), settings=('num_layers',))
        return None
    if c.model == 'imagenet_resnet':
        if d not in IMAGENET_STAGES:
            raise UserError('num_layers=%d: the ImageNet ResNets come in depths %s'
                            % (d, ', '.join(map(str, IMAGENET_STAGES))), settings=('num_layers',))
        return None
    if c.model == 'wide_resnet':
        if d < 10 or (d - 4) % 6:
            raise UserError('num_layers=%d: a wide ResNet has depth 6n+4 with n >= 1 '
                            '(10, 16, 22, 28, 40, ...)' % d, settings=('num_layers',))
        return (d - 4) // 6
    if c.bottleneck:
        if d < 11 or (d - 2) % 9:
            raise UserError('num_layers=%d: a bottleneck ResNet has depth 9n+2 with n >= 1 '
                            '(11, 29, 56, 110, 164, 1001, ...)' % d, settings=('num_layers',))
        return (d - 2) // 9
    if d < 8 or (d - 2) % 6:
        raise UserError('num_layers=%d: the depth must be 6n+2 with n >= 1 '
                        '(8, 14, 20, 32, 44, 56, 110, 1202, ...)' % d, settings=('num_layers',))
    return (d - 2) // 6


def build(config: ModelConfig, *, seed: int = 0, compute_dtype: tf.DType = tf.float32,
          bn_momentum: float = layers.BN_MOMENTUM, sync_batch_norm: bool = False,
          zero_init_residual: bool = False, norm_class: type = layers.BatchNorm) -> tf.Module:
    """The network a ModelConfig describes, with `config` attached as net.config.

    The keyword arguments shape training but not the architecture (a checkpoint
    restores into a net built with any of them): the initialisation seed, the dtype
    of the activations, batch norm's momentum and synchronisation over replicas, and
    whether each residual branch starts at zero, the batch-norm class (see
    layers.Factory).
    """
    c = config
    make = layers.Factory(tf.random.Generator.from_seed(seed), strided_padding=c.strided_padding,
                          bn_momentum=bn_momentum, sync_batch_norm=sync_batch_norm,
                          dropout_rate=c.dropout_rate, zero_init_residual=zero_init_residual,
                          norm_class=norm_class)
    if c.model == 'vgg':
        net = VGG(c.num_layers, make, c.num_classes, compute_dtype)
    else:
        if c.model == 'imagenet_resnet':
            stages = [(n, w, 1 if i == 0 else 2)
                      for i, (n, w) in enumerate(zip(IMAGENET_STAGES[c.num_layers],
                                                     IMAGENET_WIDTHS))]
            stem_width = IMAGENET_WIDTHS[0]
        else:
            n = units_per_stage(c)
            stages = [(n, w * c.widen_factor, 1 if i == 0 else 2)
                      for i, w in enumerate(CIFAR_WIDTHS)]
            stem_width = CIFAR_WIDTHS[0]
        net = resnet.ResNet(stages, make, stem_width=stem_width, version=c.resnet_version,
                            bottleneck=c.bottleneck,
                            shortcut_type=c.shortcut_type if c.shortcut_connections else None,
                            num_classes=c.num_classes, compute_dtype=compute_dtype)
    net.config = config
    return net


def cifar_resnet(depth: int, version: int = 2, bottleneck: bool = False,
                 shortcut_type: str | None = None, shortcut_connections: bool = True,
                 num_classes: int = 10, **kwargs) -> tf.Module:
    """A CIFAR ResNet of He et al. 2015/2016, e.g. cifar_resnet(164, bottleneck=True)."""
    return build(ModelConfig('resnet', depth, version, bottleneck, shortcut_type,
                             shortcut_connections, num_classes=num_classes), **kwargs)


def wide_resnet(depth: int, widen_factor: int, dropout_rate: float = 0.0, num_classes: int = 10,
                **kwargs) -> tf.Module:
    """WRN-depth-widen_factor of Zagoruyko & Komodakis 2016, e.g. wide_resnet(28, 10, 0.3)."""
    return build(ModelConfig('wide_resnet', depth, widen_factor=widen_factor,
                             dropout_rate=dropout_rate, num_classes=num_classes), **kwargs)


def vgg(depth: int, num_classes: int = 10, **kwargs) -> tf.Module:
    """VGG-depth with batch norm for 32x32 images, e.g. vgg(16)."""
    return build(ModelConfig('vgg', depth, num_classes=num_classes), **kwargs)


def imagenet_resnet(depth: int, version: int = 1, num_classes: int = 10, **kwargs) -> tf.Module:
    """ResNet-18/34/50/101/152 adapted to 32x32 (3x3 stem, no max-pool); version=2: pre-act."""
    return build(ModelConfig('imagenet_resnet', depth, version, num_classes=num_classes),
                 **kwargs)


def count_parameters(module) -> int:
    """Number of trainable scalars in a module (or a list of modules)."""
    modules = module if isinstance(module, (list, tuple)) else [module]
    return sum(int(v.shape.num_elements()) for m in modules for v in m.trainable_variables)


def inference_graph(module, input_shape, dtype=tf.float32):
    """The graph of module(x, training=False) for inputs of this shape: its ops, for counting."""
    return tf.function(lambda x: module(x, training=False)).get_concrete_function(
        tf.TensorSpec(input_shape, dtype)).graph


def multiply_adds(net, image_size=32):
    """Multiply-adds of one image's forward pass: every convolution and the linear layer(s),
    one multiply-add counted once (batch norm, ReLU, pooling and the additions, a few
    per cent, are not counted). Counted from the traced graph, so every net counts."""
    total = 0
    graph = inference_graph(net, [1, image_size, image_size, 3])
    for op in graph.get_operations():
        if op.type == 'Conv2D':
            kh, kw, cin, _ = op.inputs[1].shape.as_list()
            total += op.outputs[0].shape.num_elements() * kh * kw * cin
        elif op.type == 'MatMul':
            k = op.inputs[0].shape.as_list()[-1]
            total += op.outputs[0].shape.num_elements() * k
    return total


def decayed_weights(net):
    """The conv and linear kernels: the variables that get L2 weight decay."""
    return [m.kernel for m in net.submodules if isinstance(m, (layers.Conv2D, layers.Dense))]


def summary(net, image_size=32):
    """Text table of the architecture: parts, output shapes, trainable parameters."""
    trace = []
    net(tf.zeros([1, image_size, image_size, 3]), training=False, trace=trace)
    parts = net.parts()
    c = net.config
    details = []
    if c.model != 'vgg':
        details.append('%s shortcuts' % (('option %s' % c.shortcut_type)
                                         if c.shortcut_connections else 'no'))
        details.append('pre-activation' if c.resnet_version == 2 else 'post-activation')
    if c.dropout_rate:
        details.append('dropout %g' % c.dropout_rate)
    lines = ['%s, %d classes%s' % (c.describe(), c.num_classes,
                                   ''.join(', ' + d for d in details)),
             '%-24s %-16s %12s' % ('part', 'output shape', 'parameters')]
    for (name, shape), (_, modules) in zip(trace, parts):
        units = (' (%d units)' % len(modules)
                 if name.startswith('stage') and c.model != 'vgg' else '')
        lines.append('%-24s %-16s %12s' % (name + units, 'x'.join(str(d) for d in shape[1:]),
                                           format(count_parameters(modules), ',')))
    lines.append('trainable parameters: %s' % format(count_parameters(net), ','))
    lines.append('multiply-adds per image: %s (convolutions and linear layer, one '
                 'multiply-add counted once)' % format(multiply_adds(net, image_size), ','))
    return '\n'.join(lines)
