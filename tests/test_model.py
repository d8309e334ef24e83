"""The network: parameter counts, shapes, the shortcut, the plain toggle, batch norm."""

import numpy as np
import pytest
import tensorflow as tf

from v2 import model as m
from v2.errors import UserError


@pytest.mark.parametrize('depth, count', [(20, 269_722), (110, 1_727_962)])
def test_parameter_counts_match_the_paper_exactly(depth, count):
    # He et al. 2015, Table 6: ResNet-20 0.27M, ResNet-110 1.7M.
    assert m.count_parameters(m.ResNet(m.ModelConfig(depth))) == count


@pytest.mark.parametrize('depth, millions', [(32, 0.46), (44, 0.66), (56, 0.85), (1202, 19.4)])
def test_parameter_counts_match_the_paper_rounded(depth, millions):
    count = m.count_parameters(m.ResNet(m.ModelConfig(depth)))
    assert round(count / 1e6, 2 if depth < 1000 else 1) == millions


def test_plain_net_has_the_same_parameters():
    assert m.count_parameters(m.ResNet(m.ModelConfig(20, shortcut_connections=False))) == 269_722


@pytest.mark.parametrize('depth', [0, 7, 9, 21, 100])
def test_depth_not_6n_plus_2_is_refused(depth):
    with pytest.raises(UserError, match=r'6n\+2'):
        m.units_per_stage(depth)


def test_shapes_at_every_stage():
    trace = []
    logits = m.ResNet(m.ModelConfig(8))(tf.zeros([2, 32, 32, 3]), trace=trace)
    assert logits.shape == (2, 10)
    assert [shape for _, shape in trace] == [(2, 32, 32, 16), (2, 32, 32, 16), (2, 16, 16, 32),
                                             (2, 8, 8, 64), (2, 64), (2, 10)]


def test_summary_lists_stages_and_the_parameter_count():
    text = m.summary(m.ResNet(m.ModelConfig(20)))
    assert 'stage 3 (3 units)' in text and '8x8x64' in text
    assert 'trainable parameters: 269,722' in text


def test_identity_shortcut_pools_and_pads_evenly():
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 16)).astype(np.float32)
    got = m.identity_shortcut(tf.constant(x), 32, 2).numpy()
    pooled = x.reshape(2, 4, 2, 4, 2, 16).mean(axis=(2, 4))
    expected = np.concatenate([np.zeros((2, 4, 4, 8)), pooled, np.zeros((2, 4, 4, 8))], axis=-1)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    same = m.identity_shortcut(tf.constant(x), 16, 1)
    np.testing.assert_array_equal(same.numpy(), x)


def _unit_pair(share_preact, stride=1, in_ch=16, out_ch=16):
    rng = tf.random.Generator.from_seed(1)
    residual = m.PreActUnit(in_ch, out_ch, stride, True, share_preact, rng, 'r')
    plain = m.PreActUnit(in_ch, out_ch, stride, False, share_preact, rng, 'p')
    for a, b in zip(plain.variables, residual.variables):
        a.assign(b)
    return residual, plain


@pytest.mark.parametrize('stride, in_ch, out_ch', [(1, 16, 16), (2, 16, 32)])
def test_the_plain_unit_is_the_residual_unit_without_the_addition(stride, in_ch, out_ch):
    residual, plain = _unit_pair(False, stride, in_ch, out_ch)
    x = tf.random.normal([2, 8, 8, in_ch])
    difference = residual(x, training=False) - plain(x, training=False)
    np.testing.assert_allclose(difference.numpy(),
                               m.identity_shortcut(x, out_ch, stride).numpy(), atol=1e-5)


def test_first_unit_shortcut_takes_the_shared_preactivation():
    residual, plain = _unit_pair(share_preact=True)
    for unit in (residual, plain):
        unit.bn1.moving_mean.assign(tf.fill([16], 0.5))      # so that BN -> ReLU shows
    x = tf.random.normal([2, 8, 8, 16])
    difference = residual(x, training=False) - plain(x, training=False)
    preact = tf.nn.relu(residual.bn1(x, training=False))
    np.testing.assert_allclose(difference.numpy(), preact.numpy(), atol=1e-5)


def test_plain_net_differs_from_the_residual_net_only_by_the_shortcuts():
    residual = m.ResNet(m.ModelConfig(8), seed=3)
    plain = m.ResNet(m.ModelConfig(8, shortcut_connections=False), seed=3)
    for a, b in zip(residual.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())     # same seed, same weights
    x = tf.random.normal([2, 32, 32, 3])
    assert not np.allclose(residual(x).numpy(), plain(x).numpy())


def test_batch_norm_uses_batch_statistics_in_training_and_moving_ones_at_evaluation():
    bn = m.BatchNorm(4, 'bn')
    x = tf.random.normal([8, 5, 5, 4], mean=3.0, stddev=2.0)
    y = bn(x, training=True).numpy()
    np.testing.assert_allclose(y.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    batch_mean = x.numpy().mean(axis=(0, 1, 2))
    np.testing.assert_allclose(bn.moving_mean.numpy(), (1 - m.BN_MOMENTUM) * batch_mean, rtol=1e-4)
    z = bn(x, training=False).numpy()
    expected = (x.numpy() - bn.moving_mean.numpy()) / np.sqrt(bn.moving_variance.numpy()
                                                              + m.BN_EPSILON)
    np.testing.assert_allclose(z, expected, rtol=1e-4, atol=1e-4)


def test_conv_init_is_he_normal():
    conv = m.Conv2D(64, 64, 3, 1, tf.random.Generator.from_seed(0), 'c')
    assert abs(np.std(conv.kernel.numpy()) - np.sqrt(2 / (9 * 64))) < 0.003


def test_weight_decay_applies_to_every_conv_and_the_linear_kernel_only():
    net = m.ResNet(m.ModelConfig(20))
    assert len(net.decayed_weights) == 20           # 19 convolutions + 1 linear layer
    assert all('kernel' in v.name for v in net.decayed_weights)


def test_config_round_trips_through_json():
    config = m.ModelConfig(56, shortcut_connections=False)
    assert m.ModelConfig.from_json(config.to_json()) == config
