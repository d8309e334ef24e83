"""The networks: parameter counts against the papers, shapes, configs, the family rules."""

import numpy as np
import pytest
import tensorflow as tf

from v2.errors import UserError
from v2.nets import model as m
from v2.tools import catalog

C = m.ModelConfig

# Trainable parameters of every network of v2.tools.catalog, counted once by hand-checked
# arithmetic (ResNet-20: 267,696 conv + 650 linear + 1,376 batch-norm scalars).
EXACT = {
    'ResNet-20': 269_722, 'ResNet-32': 464_154, 'ResNet-44': 658_586, 'ResNet-56': 853_018,
    'ResNet-110': 1_727_962, 'ResNet-1202': 19_421_274, 'ResNet-164 bottleneck': 1_703_258,
    'ResNet-1001 bottleneck': 10_327_706, 'WRN-40-4': 8_949_210, 'WRN-16-8': 10_961_370,
    'WRN-28-10': 36_479_194, 'VGG-11': 9_228_362, 'VGG-13': 9_413_066, 'VGG-16': 14_724_042,
    'VGG-19': 20_035_018, 'ResNet-18 (ImageNet layout)': 11_173_962,
    'ResNet-34 (ImageNet layout)': 21_282_122, 'ResNet-50 (ImageNet layout)': 23_520_842,
    'ResNet-101 (ImageNet layout)': 42_512_970,
}
# Built once each, and only in the slow tier: seconds to minutes to build on 2 cores.
LARGEST = {'ResNet-1202', 'ResNet-1001 bottleneck', 'WRN-28-10', 'ResNet-101 (ImageNet layout)'}


def _networks(largest):
    return [pytest.param(config, paper, id=config.describe(),
                         marks=[pytest.mark.slow] if largest else [])
            for config, paper, _ in catalog.PAPER_NETWORKS
            if (config.describe() in LARGEST) == largest]


@pytest.mark.parametrize('config, paper', _networks(False) + _networks(True))
def test_parameter_counts_match_the_papers(config, paper):
    net = m.build(config)
    assert m.count_parameters(net) == EXACT[config.describe()]
    digits = len(paper.split('.')[1])
    assert '%.*f' % (digits, catalog.paper_count(net) / 1e6) == paper
    if config.describe() == 'ResNet-1001 bottleneck':
        # He et al. 2016's 10.2M: the conv and linear weights alone.
        assert catalog.paper_count(net) == 10_178_480


def test_post_activation_and_plain_resnet_20_have_the_same_count():
    assert m.count_parameters(m.cifar_resnet(20, version=1)) == 269_722
    assert m.count_parameters(m.cifar_resnet(20, shortcut_connections=False)) == 269_722


@pytest.mark.parametrize('name', sorted(catalog.PAPER_MULTIPLY_ADDS))
def test_multiply_adds_match_the_published_figures(name):
    """Li et al. 2017 give the multiply-adds of these CIFAR nets to three digits."""
    config, = [c for c, _, _ in catalog.PAPER_NETWORKS if c.describe() == name]
    assert '%.3g' % m.multiply_adds(m.build(config)) == '%.3g' % catalog.PAPER_MULTIPLY_ADDS[name]


def test_catalog_table_is_generated_from_the_nets(monkeypatch):
    small = [row for row in catalog.PAPER_NETWORKS
             if row[0].describe() in ('ResNet-20', 'WRN-16-8', 'VGG-11')]
    monkeypatch.setattr(catalog, 'PAPER_NETWORKS', small)
    text = catalog.table()
    assert '| WRN-16-8 | `--model=wide_resnet --num_layers=16 --widen_factor=8` | B | ' \
           '10,961,370 | 11.0M | 1.5G |' in text
    assert text.count('\n| ') == len(small)


TINY = [C(num_layers=8), C(num_layers=8, resnet_version=1), C(num_layers=11, bottleneck=True),
        C(num_layers=11, bottleneck=True, resnet_version=1, shortcut_type='C'),
        C(num_layers=8, shortcut_type='A_subsample'), C(num_layers=8, shortcut_type='B'),
        C('wide_resnet', 10, widen_factor=2, dropout_rate=0.3),
        C(num_layers=8, shortcut_connections=False)]


@pytest.mark.parametrize('config', TINY, ids=[c.describe() + ' ' + str(c.shortcut_type)
                                               for c in TINY])
def test_cifar_stages_halve_the_map_and_widen(config):
    trace = []
    logits = m.build(config)(tf.zeros([2, 32, 32, 3]), trace=trace)
    assert logits.shape == (2, 10) and logits.dtype == tf.float32
    grow = 4 if config.bottleneck else config.widen_factor
    assert [shape for _, shape in trace] == [
        (2, 32, 32, 16), (2, 32, 32, 16 * grow), (2, 16, 16, 32 * grow), (2, 8, 8, 64 * grow),
        (2, 64 * grow), (2, 10)]


def test_vgg_and_imagenet_shapes():
    trace = []
    m.vgg(11)(tf.zeros([1, 32, 32, 3]), trace=trace)
    assert [s for _, s in trace][-2:] == [(1, 1, 1, 512), (1, 10)]
    trace = []
    m.imagenet_resnet(18, num_classes=100)(tf.zeros([1, 32, 32, 3]), trace=trace)
    assert [s for _, s in trace] == [(1, 32, 32, 64), (1, 32, 32, 64), (1, 16, 16, 128),
                                     (1, 8, 8, 256), (1, 4, 4, 512), (1, 512), (1, 100)]


@pytest.mark.parametrize('config, message', [
    (dict(num_layers=21), r'num_layers=21: the depth must be 6n\+2'),
    (dict(num_layers=0), r'6n\+2'),
    (dict(num_layers=21, bottleneck=True), r'9n\+2'),
    (dict(model='wide_resnet', num_layers=20, widen_factor=4), r'6n\+4'),
    (dict(model='vgg', num_layers=12), 'VGG comes in depths 11, 13, 16, 19'),
    (dict(model='imagenet_resnet', num_layers=20), 'ImageNet ResNets come in depths'),
    (dict(model='mlp'), '^model=mlp'), (dict(shortcut_type='D'), '^shortcut_type=D'),
    (dict(resnet_version=3), 'resnet_version=3'),
    (dict(num_layers=20, widen_factor=0), 'widen_factor=0'),
    (dict(strided_padding='valid'), 'strided_padding=valid'),
])
def test_configs_that_make_no_sense_name_the_setting(config, message):
    with pytest.raises(UserError, match=message) as caught:
        C(**config)
    assert '--' not in str(caught.value)                      # the library speaks settings
    assert caught.value.flag_message().startswith('--')       # the command line, flags


def test_family_defaults_follow_the_papers():
    assert C().num_layers == 110 and C().shortcut_type == 'A'
    assert C(bottleneck=True).num_layers == 164 and C(bottleneck=True).shortcut_type == 'B'
    assert C('wide_resnet', widen_factor=10).describe() == 'WRN-28-10'
    assert C('imagenet_resnet', 50).bottleneck and not C('imagenet_resnet', 34).bottleneck


def test_summary_lists_stages_and_the_parameter_count():
    text = m.summary(m.cifar_resnet(20))
    assert 'stage 3 (3 units)' in text and '8x8x64' in text
    assert 'option A shortcuts, pre-activation' in text
    assert 'trainable parameters: 269,722' in text


def test_plain_net_has_the_residual_nets_weights_for_the_same_seed():
    residual, plain = m.cifar_resnet(8), m.cifar_resnet(8, shortcut_connections=False)
    for a, b in zip(residual.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = tf.random.normal([2, 32, 32, 3])
    assert not np.allclose(residual(x).numpy(), plain(x).numpy())


def test_weight_decay_applies_to_every_conv_and_the_linear_kernel_only():
    weights = m.decayed_weights(m.cifar_resnet(20))
    assert len(weights) == 20           # 19 convolutions + 1 linear layer
    assert all('kernel' in v.name for v in weights)


def test_config_round_trips_through_json_and_reads_older_formats():
    config = C('wide_resnet', 16, widen_factor=4, dropout_rate=0.3, num_classes=100,
               dataset='cifar100')
    assert C.from_json(config.to_json()) == config
    # The first format, before strided_padding: such checkpoints keep TensorFlow's SAME.
    old = C.from_json('{"num_classes": 10, "num_layers": 20, "shortcut_connections": false}')
    assert old == C(num_layers=20, shortcut_connections=False, strided_padding='tf_same')
    assert C(num_layers=20).strided_padding == 'symmetric'


def test_one_call_builds_a_preact_resnet_164_for_cifar100():
    net = m.cifar_resnet(164, bottleneck=True, num_classes=100)
    assert net(tf.zeros([1, 32, 32, 3])).shape == (1, 100)
    assert net.config.describe() == 'ResNet-164 bottleneck'
