"""Every layer and unit kind, and the net's head, against the numpy oracles of numpy_ref."""

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf

from v2.nets import layers, resnet
from v2.nets import model as m

C = m.ModelConfig


def make(seed=0, **options):
    return layers.Factory(tf.random.Generator.from_seed(seed), **options)


def randomize_batch_norms(module, seed=0):
    """Non-trivial scales, offsets and statistics, so that every BN shows in the output."""
    rng = np.random.default_rng(seed)
    for bn in [s for s in module.submodules if isinstance(s, layers.BatchNorm)] + (
            [module] if isinstance(module, layers.BatchNorm) else []):
        n = bn.gamma.shape[0]
        bn.gamma.assign(rng.uniform(0.5, 1.5, n).astype(np.float32))
        bn.beta.assign(rng.normal(0, 0.3, n).astype(np.float32))
        bn.moving_mean.assign(rng.normal(0, 0.3, n).astype(np.float32))
        bn.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype(np.float32))


def images(shape, seed=1):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def close(got, expected, tolerance=1e-4):
    np.testing.assert_allclose(np.asarray(got), expected, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize('size, kernel_size, stride', [(8, 3, 2), (7, 3, 2), (8, 1, 2),
                                                       (8, 3, 1)])
def test_convolution_pads_one_pixel_on_every_side_like_torch(size, kernel_size, stride):
    conv = make().conv(3, 4, kernel_size, stride, 'c')
    x = images((2, size, size, 3))
    close(conv(tf.constant(x)), ref.conv(x, conv.kernel.numpy(), stride))


def test_strided_convolution_is_centred_on_the_pixel_the_shortcut_keeps():
    # A 3x3 filter that picks its centre pixel turns the conv into a subsampler: it must
    # keep x[::2, ::2], what option A's strided shortcut keeps (He et al. 2015).
    conv = make().conv(1, 1, 3, 2, 'c')
    conv.kernel.assign(np.pad(np.ones((1, 1, 1, 1), np.float32), [(1, 1), (1, 1), (0, 0), (0, 0)]))
    x = tf.random.normal([1, 8, 8, 1])
    np.testing.assert_array_equal(conv(x).numpy(),
                                  layers.IdentityShortcut(1, 2, pool=False)(x, False).numpy())
    legacy = make(strided_padding='tf_same').conv(1, 1, 3, 2, 'c')
    legacy.kernel.assign(conv.kernel)
    np.testing.assert_array_equal(legacy(x).numpy(), x.numpy()[:, 1::2, 1::2])


def test_conv_init_is_he_normal():
    conv = make().conv(64, 64, 3, 1, 'c')
    assert abs(np.std(conv.kernel.numpy()) - np.sqrt(2 / (9 * 64))) < 0.003


# Nets in which some convolutions have more (or fewer) inputs than outputs: the stem
# (3 -> 16), each stage's first unit (16 -> 32, 32 -> 64), option B's 1x1 projections,
# a bottleneck's 1x1 convs (64 -> 16 -> 64) and a wide net's first unit (16 -> 16k).
FAN_NETS = [C(num_layers=8), C(num_layers=8, shortcut_type='B'),
            C(num_layers=11, bottleneck=True), C('wide_resnet', 10, widen_factor=2)]


def assert_he_fan_in(kernel, name):
    """He et al. 2015 ("Delving Deep into Rectifiers", eq. 10): a k x k conv with c_in inputs
    has weights ~ N(0, 2 / (k*k*c_in)), its fan-in; the fan-out k*k*c_out differs by the
    factor c_out / c_in (5.3 at the stem: 27 against 144). The sample variance of N normal
    draws has relative standard error sqrt(2 / N); five of them is the tolerance: at most
    34% for the stem's 432 weights, where the fan-out would be 81% off (50% or 100% for
    the layers that double or halve the width)."""
    k, _, fan_in, _ = kernel.shape
    w = np.asarray(kernel, np.float64)
    ratio = w.var() / (2.0 / (k * k * fan_in))
    assert abs(ratio - 1) < 5 * np.sqrt(2 / w.size), (name, kernel.shape, ratio)


def assert_uniform_fan_in(kernel):
    """The linear layer: uniform(+-1/sqrt(fan_in)), so every weight inside the bound, the
    largest near it (640 draws: P(max < 0.9 bound) = 0.9**640), variance bound**2 / 3
    (relative standard error sqrt(0.8 / N) for uniform draws; five of them allowed).
    The fan-out's bound 1/sqrt(10) is 2.5 times the fan-in's 1/sqrt(64)."""
    w = np.asarray(kernel, np.float64)
    bound = 1 / np.sqrt(w.shape[0])
    assert 0.9 * bound < np.abs(w).max() <= bound
    assert abs(w.var() / (bound ** 2 / 3) - 1) < 5 * np.sqrt(0.8 / w.size)


@pytest.mark.parametrize('config', FAN_NETS, ids=[c.describe() + ' ' + str(c.shortcut_type)
                                                  for c in FAN_NETS])
def test_every_conv_is_initialised_by_its_fan_in_and_the_linear_layer_too(config):
    """Every conv of each net by its fan-in (assert_he_fan_in), the linear layer
    uniform(+-1/sqrt(fan_in)) (assert_uniform_fan_in)."""
    net = m.build(config)
    convs = [c for c in net.submodules if isinstance(c, layers.Conv2D)]
    assert sum(c.kernel.shape[2] != c.kernel.shape[3] for c in convs) >= 3
    for conv in convs:
        assert_he_fan_in(conv.kernel.numpy(), conv.name)
    assert_uniform_fan_in(net.fc.kernel.numpy())


def test_the_keras_reference_net_is_initialised_by_the_fan_in_too():
    """The Keras twin (v2.tools.keras_nets, the reference of docs/reproduction.md) must start
    as ours does: He normal by the fan-in, the linear layer uniform(+-1/sqrt(fan_in))."""
    from v2.tools import keras_nets
    net = keras_nets.network(C(num_layers=8))
    kernels = [w for w in net.weights if w.path.endswith('kernel')]
    convs = [w for w in kernels if len(w.shape) == 4]
    assert len(convs) == 7 and sum(w.shape[2] != w.shape[3] for w in convs) == 3
    for w in convs:
        assert_he_fan_in(np.asarray(w.numpy()), w.path)
    dense, = [w for w in kernels if len(w.shape) == 2]
    assert_uniform_fan_in(np.asarray(dense.numpy()))


def test_batch_norm_trains_on_the_batch_and_evaluates_with_moving_averages():
    bn = layers.BatchNorm(4, 'bn', momentum=0.8)
    randomize_batch_norms(bn)
    before_mean, before_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    x = images((8, 5, 5, 4)) * 2 + 3
    close(bn(tf.constant(x), training=True),
          ref.batch_norm_training(x, bn.gamma.numpy(), bn.beta.numpy()), 1e-3)
    n = x.size // 4
    close(bn.moving_mean.numpy(), 0.8 * before_mean + 0.2 * x.mean(axis=(0, 1, 2)))
    close(bn.moving_variance.numpy(),                       # the unbiased batch variance
          0.8 * before_var + 0.2 * x.var(axis=(0, 1, 2)) * n / (n - 1), 1e-3)
    close(bn(tf.constant(x), training=False), ref.bn_of(bn)(x), 1e-3)


@pytest.mark.parametrize('pool', [True, False])
def test_identity_shortcut_subsamples_and_pads_evenly(pool):
    x = images((2, 8, 8, 16))
    close(layers.IdentityShortcut(32, 2, pool=pool)(tf.constant(x), False),
          ref.option_a(x, 32, 2, pool), 1e-5)
    np.testing.assert_array_equal(layers.IdentityShortcut(16, 1)(tf.constant(x), False).numpy(), x)


@pytest.mark.parametrize('batch_norm', [False, True])
def test_projection_shortcut_is_a_strided_1x1_conv(batch_norm):
    projection = layers.Projection(16, 32, 2, batch_norm, make())
    randomize_batch_norms(projection)
    x = images((2, 8, 8, 16))
    expected = ref.conv(x, projection.conv.kernel.numpy(), 2)
    if batch_norm:
        expected = ref.bn_of(projection.bn)(expected)
    close(projection(tf.constant(x), training=False), expected)


def test_shortcut_options_pick_identity_or_projection():
    f = make()
    assert isinstance(layers.shortcut('B', 16, 16, 1, False, f), layers.IdentityShortcut)
    assert isinstance(layers.shortcut('B', 16, 32, 2, False, f), layers.Projection)
    assert isinstance(layers.shortcut('C', 16, 16, 1, False, f), layers.Projection)
    assert layers.shortcut('C', 16, 16, 1, True, f).bn is not None     # post-activation: + BN
    assert layers.shortcut('A', 16, 32, 2, False, f).pool
    assert not layers.shortcut('A_subsample', 16, 32, 2, False, f).pool


@pytest.mark.parametrize('stride, share', [(1, False), (2, False), (1, True)])
def test_preact_basic_against_numpy(stride, share):
    f = make()
    link = layers.shortcut('A', 16, 32 if stride > 1 else 16, stride, False, f)
    width = 32 if stride > 1 else 16
    unit = resnet.PreActBasic(16, width, stride, link, share, f, 'u')
    randomize_batch_norms(unit)
    x = images((2, 8, 8, 16))
    branch, pre = ref.preact_basic(x, unit)
    source = pre if share else x                      # the first unit shares its BN -> ReLU
    close(unit(tf.constant(x), training=False), branch + ref.option_a(source, width, stride))


def test_preact_bottleneck_against_numpy():
    f = make()
    link = layers.shortcut('B', 16, 64, 2, False, f)
    unit = resnet.PreActBottleneck(16, 16, 2, link, False, f, 'u')
    randomize_batch_norms(unit)
    x = images((2, 6, 6, 16))
    branch, pre = ref.preact_bottleneck(x, unit)
    close(unit(tf.constant(x), training=False),
          branch + ref.conv(pre, link.conv.kernel.numpy(), 2))


@pytest.mark.parametrize('stride', [1, 2])
def test_postact_basic_against_numpy(stride):
    f = make()
    width = 32 if stride > 1 else 16
    unit = resnet.PostActBasic(16, width, stride,
                               layers.shortcut('A_subsample', 16, width, stride, True, f),
                               False, f, 'u')
    randomize_batch_norms(unit)
    x = ref.relu(images((2, 8, 8, 16)))
    expected = ref.relu(ref.postact_basic(x, unit) + ref.option_a(x, width, stride, pool=False))
    close(unit(tf.constant(x), training=False), expected)


def test_postact_bottleneck_against_numpy():
    f = make()
    link = layers.shortcut('B', 16, 64, 2, True, f)
    unit = resnet.PostActBottleneck(16, 16, 2, link, False, f, 'u')
    randomize_batch_norms(unit)
    x = ref.relu(images((2, 6, 6, 16)))
    shortcut = ref.bn_of(link.bn)(ref.conv(x, link.conv.kernel.numpy(), 2))
    close(unit(tf.constant(x), training=False),
          ref.relu(ref.postact_bottleneck(x, unit) + shortcut))


@pytest.mark.parametrize('unit_class', [resnet.PreActBasic, resnet.PreActBottleneck,
                                        resnet.PostActBasic, resnet.PostActBottleneck])
def test_plain_unit_is_the_residual_unit_without_the_addition(unit_class):
    channels = 16 * unit_class.expansion              # a unit that keeps its input's shape

    def build(with_shortcut):
        f = make(5)
        link = layers.shortcut('A', channels, channels, 1, False, f) if with_shortcut else None
        return unit_class(channels, 16, 1, link, False, f, 'u')
    residual, plain = build(True), build(False)
    x = tf.nn.relu(tf.random.normal([2, 8, 8, channels]))
    with_shortcut, without = residual(x, False).numpy(), plain(x, False).numpy()
    if unit_class.__name__.startswith('Post'):        # the ReLU comes after the addition
        close(without, ref.relu(ref.postact_basic(x.numpy(), plain)
                                if unit_class is resnet.PostActBasic
                                else ref.postact_bottleneck(x.numpy(), plain)))
    else:
        close(with_shortcut - without, x.numpy(), 1e-4)


def test_the_head_is_bn_relu_average_pool_and_linear():
    net = m.cifar_resnet(8)
    randomize_batch_norms(net)
    x = images((2, 32, 32, 3))
    logits = net(tf.constant(x)).numpy()
    stage3 = net.stem(tf.constant(x))
    for units in net.stages:
        for unit in units:
            stage3 = unit(stage3, False)
    features = ref.relu(ref.bn_of(net.final_bn)(stage3.numpy())).mean(axis=(1, 2))
    close(logits, features @ net.fc.kernel.numpy() + net.fc.bias.numpy())


def test_vgg_stage_is_conv_bn_relu_then_max_pool():
    net = m.vgg(11)
    randomize_batch_norms(net)
    x = images((1, 32, 32, 3))
    (conv, bn), = net.stages[0]
    expected = ref.max_pool(ref.relu(ref.bn_of(bn)(ref.conv(x, conv.kernel.numpy()))))
    trace = []
    net(tf.constant(x), trace=trace)
    got = tf.nn.max_pool2d(tf.nn.relu(bn(conv(tf.constant(x)), False)), 2, 2, 'VALID')
    close(got, expected)
    assert trace[0] == ('stage 1', (1, 16, 16, 64))


def test_imagenet_nets_use_the_same_units_with_a_3x3_stem():
    net = m.imagenet_resnet(50, version=2)
    assert isinstance(net.stages[0][0], resnet.PreActBottleneck)
    assert net.stem.kernel.shape == (3, 3, 3, 64) and net.stem.stride == 1
    assert isinstance(m.imagenet_resnet(18).stages[1][0], resnet.PostActBasic)


def test_dropout_drops_its_fraction_and_scales_the_rest():
    dropout = layers.Dropout(0.3, 7, 'd')
    x = tf.ones([200, 50])
    y = dropout(x, training=True).numpy()
    dropped = np.mean(y == 0)
    assert abs(dropped - 0.3) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(dropout(x, training=False).numpy(), x.numpy())


def test_dropout_is_repeatable_from_its_checkpointed_state():
    net = m.wide_resnet(10, 2, dropout_rate=0.5)
    x = tf.random.normal([2, 32, 32, 3])
    dropout = [d for d in net.submodules if isinstance(d, layers.Dropout)]
    assert len(dropout) == 3
    state = [d.rng.state.numpy() for d in dropout]
    first = net(x, training=True).numpy()
    for d, s in zip(dropout, state):
        d.rng.state.assign(s)
    np.testing.assert_array_equal(net(x, training=True).numpy(), first)


@pytest.mark.parametrize('version', [1, 2])
def test_zero_init_residual_starts_every_residual_unit_as_its_shortcut(version):
    net = m.build(C(num_layers=14, resnet_version=version), zero_init_residual=True)
    x = tf.nn.relu(tf.random.normal([2, 32, 32, 16]))        # a post-ReLU input, as in v1 nets
    unit = net.stages[0][1]                                  # identity shortcut, no shared BN
    close(unit(x, training=False), x.numpy(), 1e-6)
    plain = m.build(C(num_layers=14, resnet_version=version, shortcut_connections=False),
                    zero_init_residual=True)
    assert not np.allclose(plain.stages[0][1](x, training=False).numpy(), 0)


@pytest.mark.parametrize('variant', ['xla', 'custom_gradient'])
def test_the_step_variants_batch_norms_compute_what_the_trainers_does(variant):
    from v2.tools import step_variants
    x = tf.constant(images((4, 8, 8, 16)) * 2 + 1)
    results = []
    for norm_class in (layers.BatchNorm, step_variants.IN_PROCESS[variant]):
        bn = norm_class(16, 'bn', momentum=0.8)
        randomize_batch_norms(bn)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = bn.with_relu(x, training=True)
            loss = tf.reduce_sum(y * tf.range(16, dtype=tf.float32))
        results.append([y, *tape.gradient(loss, [x, bn.gamma, bn.beta]), bn.moving_mean,
                        bn.moving_variance])
    for ours, theirs in zip(*results):
        close(theirs, np.asarray(ours), 1e-3)
