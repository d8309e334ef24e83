"""The networks: parameter counts against the papers, shapes, shortcuts, units, plain nets."""

import numpy as np
import pytest
import tensorflow as tf

from v2 import catalog, layers, model as m, resnet
from v2.errors import UserError

C = m.ModelConfig

# Trainable parameters of every network of v2.catalog, counted once by hand-checked
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


@pytest.mark.parametrize('config, paper, source', catalog.PAPER_NETWORKS,
                         ids=[c.describe() for c, *_ in catalog.PAPER_NETWORKS])
def test_parameter_counts_match_the_papers(config, paper, source):
    net = m.build(config)
    assert m.count_parameters(net) == EXACT[config.describe()]
    digits = len(paper.split('.')[1])
    assert '%.*f' % (digits, catalog.paper_count(net) / 1e6) == paper


def test_resnet_1001_matches_the_paper_counting_weights_only():
    # He et al. 2016 give 10.2M for ResNet-1001: the conv and linear weights of the
    # net with projection shortcuts (10.18M, biases and batch norm left out).
    net = m.cifar_resnet(1001, bottleneck=True)
    assert catalog.paper_count(net) == 10_178_480


def test_post_activation_resnet_20_has_the_same_count():
    assert m.count_parameters(m.cifar_resnet(20, version=1)) == 269_722


def test_catalog_table_is_generated_from_the_nets():
    text = catalog.table()
    assert '| WRN-28-10 | `--model=wide_resnet --num_layers=28 --widen_factor=10` | B | ' \
           '36,479,194 | 36.5M |' in text
    assert '10.2M*' in text and '10,178,480 here' in text


def test_plain_nets_have_the_parameters_of_their_residual_twins_under_option_a():
    assert m.count_parameters(m.cifar_resnet(20, shortcut_connections=False)) == 269_722


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
    (dict(num_layers=21), r'6n\+2'), (dict(num_layers=0), r'6n\+2'),
    (dict(num_layers=21, bottleneck=True), r'9n\+2'),
    (dict(model='wide_resnet', num_layers=20, widen_factor=4), r'6n\+4'),
    (dict(model='vgg', num_layers=12), 'VGG comes in depths 11, 13, 16, 19'),
    (dict(model='imagenet_resnet', num_layers=20), 'ImageNet ResNets come in depths'),
    (dict(model='mlp'), '--model=mlp'), (dict(shortcut_type='D'), '--shortcut_type=D'),
    (dict(resnet_version=3), '--resnet_version=3'),
    (dict(num_layers=20, widen_factor=0), '--widen_factor=0'),
])
def test_depths_and_options_that_make_no_sense_are_refused(config, message):
    with pytest.raises(UserError, match=message):
        C(**config)


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


@pytest.mark.parametrize('pool', [True, False])
def test_identity_shortcut_subsamples_and_pads_evenly(pool):
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
    got = layers.IdentityShortcut(32, 2, pool=pool)(tf.constant(x), False).numpy()
    sub = x.reshape(2, 4, 2, 4, 2, 16).mean(axis=(2, 4)) if pool else x[:, ::2, ::2]
    expected = np.concatenate([np.zeros((2, 4, 4, 8)), sub, np.zeros((2, 4, 4, 8))], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    same = layers.IdentityShortcut(16, 1)(tf.constant(x), False)
    np.testing.assert_array_equal(same.numpy(), x)


@pytest.mark.parametrize('batch_norm', [False, True])
def test_projection_shortcut_is_a_strided_1x1_conv(batch_norm):
    rng = tf.random.Generator.from_seed(0)
    projection = layers.Projection(16, 32, 2, batch_norm, layers.Factory(rng))
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 16)).astype(np.float32)
    got = projection(tf.constant(x), training=False).numpy()
    expected = x[:, ::2, ::2] @ projection.conv.kernel.numpy()[0, 0]
    if batch_norm:                                   # fresh statistics: mean 0, variance 1
        expected = expected / np.sqrt(1 + layers.BN_EPSILON)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_shortcut_options_pick_identity_or_projection():
    rng = layers.Factory(tf.random.Generator.from_seed(0))
    assert isinstance(layers.shortcut('B', 16, 16, 1, False, rng), layers.IdentityShortcut)
    assert isinstance(layers.shortcut('B', 16, 32, 2, False, rng), layers.Projection)
    assert isinstance(layers.shortcut('C', 16, 16, 1, False, rng), layers.Projection)
    assert layers.shortcut('C', 16, 16, 1, True, rng).bn is not None     # post-activation: + BN
    assert layers.shortcut('A', 16, 32, 2, False, rng).pool
    assert not layers.shortcut('A_subsample', 16, 32, 2, False, rng).pool


def _conv_padded(x, kernel, stride=1):
    """numpy convolution with (k-1)//2 zeros on every side, as the papers' Torch code pads."""
    k = kernel.shape[0]
    pad = (k - 1) // 2
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    out_h = (x.shape[1] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_h, kernel.shape[-1]), np.float64)
    for i in range(out_h):
        for j in range(out_h):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


@pytest.mark.parametrize('size, kernel_size, stride', [(8, 3, 2), (7, 3, 2), (8, 1, 2),
                                                       (8, 3, 1)])
def test_convolution_pads_one_pixel_on_every_side_like_torch(size, kernel_size, stride):
    conv = layers.Conv2D(3, 4, kernel_size, stride, tf.random.Generator.from_seed(0), 'c')
    x = np.random.default_rng(3).normal(size=(2, size, size, 3)).astype(np.float32)
    np.testing.assert_allclose(conv(tf.constant(x)).numpy(),
                               _conv_padded(x, conv.kernel.numpy(), stride), rtol=1e-4, atol=1e-4)


def test_strided_convolution_is_centred_on_the_pixel_the_shortcut_keeps():
    # A 3x3 filter that picks its centre pixel turns the conv into a subsampler: it must
    # keep x[::2, ::2], what option A's strided shortcut keeps (He et al. 2015).
    conv = layers.Conv2D(1, 1, 3, 2, tf.random.Generator.from_seed(0), 'c')
    conv.kernel.assign(np.pad(np.ones((1, 1, 1, 1), np.float32), [(1, 1), (1, 1), (0, 0), (0, 0)]))
    x = tf.random.normal([1, 8, 8, 1])
    np.testing.assert_array_equal(conv(x).numpy(),
                                  layers.IdentityShortcut(1, 2, pool=False)(x, False).numpy())
    legacy = layers.Conv2D(1, 1, 3, 2, tf.random.Generator.from_seed(0), 'c', 'tf_same')
    legacy.kernel.assign(conv.kernel)
    np.testing.assert_array_equal(legacy(x).numpy(), x.numpy()[:, 1::2, 1::2])


def test_checkpoints_from_before_the_symmetric_padding_keep_tensorflows_same():
    old = C.from_json('{"num_layers": 20, "num_classes": 10}')
    assert old.strided_padding == 'tf_same' and C(num_layers=20).strided_padding == 'symmetric'
    assert C.from_json(C(num_layers=20).to_json()).strided_padding == 'symmetric'


def test_preact_bottleneck_against_numpy():
    make = layers.Factory(tf.random.Generator.from_seed(0))
    link = layers.shortcut('B', 16, 64, 2, False, make)
    unit = resnet.PreActBottleneck(16, 16, 2, link, False, make, 'u')
    x = np.random.default_rng(2).normal(size=(2, 6, 6, 16)).astype(np.float32)
    scale = 1 / np.sqrt(1 + layers.BN_EPSILON)           # fresh BN at evaluation
    relu = lambda v: np.maximum(v, 0)                    # noqa: E731
    preact = relu(x * scale)
    y = relu(_conv_padded(preact, unit.conv1.kernel.numpy()) * scale)
    y = relu(_conv_padded(y, unit.conv2.kernel.numpy(), stride=2) * scale)
    y = _conv_padded(y, unit.conv3.kernel.numpy())
    expected = y + _conv_padded(preact, link.conv.kernel.numpy(), stride=2)
    got = unit(tf.constant(x), training=False).numpy()
    assert got.shape == (2, 3, 3, 64)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


class _Zero(tf.Module):
    projects = False

    def __call__(self, x, training):
        return 0.0


@pytest.mark.parametrize('unit_class', [resnet.PreActBasic, resnet.PreActBottleneck,
                                        resnet.PostActBasic, resnet.PostActBottleneck])
def test_plain_unit_is_the_residual_unit_without_the_addition(unit_class):
    channels = 16 * unit_class.expansion              # a unit that keeps its input's shape

    def make(with_shortcut):
        make = layers.Factory(tf.random.Generator.from_seed(5))
        link = layers.shortcut('A', channels, channels, 1, False, make) if with_shortcut else None
        return unit_class(channels, 16, 1, link, False, make, 'u')
    residual, plain = make(True), make(False)
    x = tf.random.normal([2, 8, 8, channels])
    assert not np.allclose(residual(x, False).numpy(), plain(x, False).numpy())
    residual.shortcut = _Zero()
    np.testing.assert_allclose(residual(x, False).numpy(), plain(x, False).numpy(), atol=1e-6)


def test_first_unit_shortcut_takes_the_shared_preactivation():
    make = layers.Factory(tf.random.Generator.from_seed(1))
    unit = resnet.PreActBasic(16, 16, 1, layers.IdentityShortcut(16, 1), True, make, 'u')
    unit.bn1.moving_mean.assign(tf.fill([16], 0.5))          # so that BN -> ReLU shows
    x = tf.random.normal([2, 8, 8, 16])
    with_link = unit(x, training=False)
    unit.shortcut = _Zero()
    preact = tf.nn.relu(unit.bn1(x, training=False))
    np.testing.assert_allclose((with_link - unit(x, training=False)).numpy(), preact.numpy(),
                               atol=1e-5)


def test_plain_net_has_the_residual_nets_weights_for_the_same_seed():
    residual, plain = m.cifar_resnet(8), m.cifar_resnet(8, shortcut_connections=False)
    for a, b in zip(residual.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = tf.random.normal([2, 32, 32, 3])
    assert not np.allclose(residual(x).numpy(), plain(x).numpy())


def test_dropout_only_while_training_and_repeatable_from_its_state():
    net = m.wide_resnet(10, 2, dropout_rate=0.5)
    x = tf.random.normal([2, 32, 32, 3])
    np.testing.assert_array_equal(net(x).numpy(), net(x).numpy())
    dropout = [d for d in net.submodules if isinstance(d, layers.Dropout)]
    assert len(dropout) == 3
    state = [d.rng.state.numpy() for d in dropout]
    first = net(x, training=True).numpy()
    for d, s in zip(dropout, state):
        d.rng.state.assign(s)
    np.testing.assert_array_equal(net(x, training=True).numpy(), first)


def test_batch_norm_uses_batch_statistics_in_training_and_moving_ones_at_evaluation():
    bn = layers.BatchNorm(4, 'bn')
    x = tf.random.normal([8, 5, 5, 4], mean=3.0, stddev=2.0)
    y = bn(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    batch_mean = x.numpy().mean(axis=(0, 1, 2))
    np.testing.assert_allclose(bn.moving_mean.numpy(), (1 - layers.BN_MOMENTUM) * batch_mean,
                               rtol=1e-4)
    z = bn(x, training=False).numpy()
    expected = (x.numpy() - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy()
                                                              + layers.BN_EPSILON)
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)


def test_conv_init_is_he_normal():
    conv = layers.Conv2D(64, 64, 3, 1, tf.random.Generator.from_seed(0), 'c')
    assert abs(np.std(conv.kernel.numpy()) - np.sqrt(2 / (9 * 64))) < 0.003


def test_weight_decay_applies_to_every_conv_and_the_linear_kernel_only():
    weights = m.decayed_weights(m.cifar_resnet(20))
    assert len(weights) == 20           # 19 convolutions + 1 linear layer
    assert all('kernel' in v.name for v in weights)


def test_config_round_trips_through_json_and_reads_the_first_format():
    config = C('wide_resnet', 16, widen_factor=4, dropout_rate=0.3, num_classes=100,
               dataset='cifar100')
    assert C.from_json(config.to_json()) == config
    old = C.from_json('{"num_classes": 10, "num_layers": 20, "shortcut_connections": false}')
    assert old == C(num_layers=20, shortcut_connections=False, strided_padding='tf_same')


def test_one_call_builds_a_preact_resnet_164_for_cifar100():
    net = m.cifar_resnet(164, bottleneck=True, num_classes=100)
    assert net(tf.zeros([1, 32, 32, 3])).shape == (1, 100)
    assert net.config.describe() == 'ResNet-164 bottleneck'


@pytest.mark.parametrize('version', [1, 2])
def test_zero_init_residual_starts_every_residual_unit_as_its_shortcut(version):
    net = m.build(C(num_layers=14, resnet_version=version), zero_init_residual=True)
    x = tf.nn.relu(tf.random.normal([2, 32, 32, 16]))        # a post-ReLU input, as in v1 nets
    unit = net.stages[0][1]                                  # identity shortcut, no shared BN
    np.testing.assert_allclose(unit(x, training=False).numpy(), x.numpy(), atol=1e-6)
    plain = m.build(C(num_layers=14, resnet_version=version, shortcut_connections=False),
                    zero_init_residual=True)
    assert not np.allclose(plain.stages[0][1](x, training=False).numpy(), 0)
