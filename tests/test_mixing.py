"""mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) against numpy and their formulas.

The draws of a batch (lam, the partners, CutMix's box) are read from pipeline.mix_draws;
the mixed batch and its targets are then recomputed here with numpy and compared with
what the pipeline gives, and what the trainer's step computes its loss from.
"""

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from test_settings import MEAN, TINY, batch, recipe, state_of, train

from v2.data import pipeline
from v2.data.pipeline import Mixing
from v2.training import inputs


def draws(mixing, key=(3, 7), size=8):
    lam, cut, box, partners = pipeline.mix_draws(tf.constant(key, tf.int64), mixing, size)
    return float(lam), bool(cut), box.numpy(), partners.numpy()


def one_hot(labels, classes=10):
    return np.eye(classes, dtype=np.float32)[labels]


def test_beta_quantiles_have_the_betas_mean_and_variance():
    """Beta(a, a) has mean 1/2 and variance 1 / (4 (2a + 1)); Beta(1, 1) is uniform."""
    u = tf.random.stateless_uniform([4000], [1, 2], minval=1e-6, maxval=1 - 1e-6)
    for alpha in (0.2, 1.0, 2.0):
        lam = pipeline.beta_quantile(u, tf.constant(alpha)).numpy()
        assert lam.mean() == pytest.approx(0.5, abs=0.02)
        assert lam.var() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.08)
    np.testing.assert_allclose(pipeline.beta_quantile(u, tf.constant(1.0)).numpy(), u.numpy(),
                               atol=1e-6)


def test_a_mixup_batch_is_numpys_blend_with_the_drawn_partners():
    images, labels = batch()
    mixing = Mixing(mixup_alpha=0.4)
    lam, cut, _, partners = draws(mixing)
    assert not cut and 0 < lam < 1 and sorted(partners) == list(range(8))
    assert (partners != np.arange(8)).any()
    mixed, targets = pipeline.mix(tf.constant(images), tf.constant(labels), 10,
                                  tf.constant((3, 7), tf.int64), mixing)
    np.testing.assert_allclose(mixed.numpy(), lam * images + (1 - lam) * images[partners],
                               rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(targets.numpy(),
                               lam * one_hot(labels) + (1 - lam) * one_hot(labels[partners]),
                               atol=1e-6)


def test_cutmixs_box_is_clipped_to_the_image():
    """lam 0.75: sides of 32 * sqrt(0.25) = 16 pixels around (1, 30), clipped to the image:
    rows 1-8..1+8 -> [0, 9), columns 30-8..30+8 -> [22, 32): 9 x 10 = 90 pixels."""
    box = pipeline.cutmix_box(tf.constant(0.75), tf.constant([1, 30])).numpy()
    assert box.tolist() == [0, 9, 22, 32]


def test_a_cutmix_batch_is_numpys_pasted_box_weighted_by_its_clipped_area():
    images, labels = batch()
    mixing = Mixing(cutmix_alpha=1.0)
    for key in [(3, 7), (3, 8), (5, 1)]:
        lam, cut, (y0, y1, x0, x1), partners = draws(mixing, key)
        assert cut and 0 <= y0 <= y1 <= 32 and 0 <= x0 <= x1 <= 32
        expected = images.copy()
        expected[:, y0:y1, x0:x1] = images[partners][:, y0:y1, x0:x1]
        weight = 1 - (y1 - y0) * (x1 - x0) / 1024
        mixed, targets = pipeline.mix(tf.constant(images), tf.constant(labels), 10,
                                      tf.constant(key, tf.int64), mixing)
        np.testing.assert_array_equal(mixed.numpy(), expected)
        np.testing.assert_allclose(targets.numpy(), weight * one_hot(labels)
                                   + (1 - weight) * one_hot(labels[partners]), atol=1e-6)


def test_cutmix_comes_at_its_probability_and_mixup_takes_the_other_batches():
    keys = [(1, step) for step in range(150)]
    both = [draws(Mixing(mixup_alpha=1.0, cutmix_alpha=1.0, cutmix_prob=0.3), k) for k in keys]
    share = np.mean([cut for _, cut, _, _ in both])
    assert share == pytest.approx(0.3, abs=0.11)          # 150 draws: 3 standard errors
    assert all(0 < lam < 1 for lam, cut, _, _ in both if not cut)
    alone = [draws(Mixing(cutmix_alpha=1.0, cutmix_prob=0.3), k) for k in keys[:40]]
    assert all(lam == 1.0 for lam, cut, _, _ in alone if not cut)    # left as they are
    images, labels = batch()
    key = next(k for k, (_, cut, _, _) in zip(keys, alone) if not cut)
    mixed, targets = pipeline.mix(tf.constant(images), tf.constant(labels), 10,
                                  tf.constant(key, tf.int64), Mixing(cutmix_alpha=1.0,
                                                                     cutmix_prob=0.3))
    np.testing.assert_array_equal(mixed.numpy(), images)
    np.testing.assert_array_equal(targets.numpy(), one_hot(labels))


def test_the_same_seed_and_step_draw_the_same_mixture():
    mixing = Mixing(mixup_alpha=1.0, cutmix_alpha=1.0, cutmix_prob=0.5)
    first = [draws(mixing, (4, s)) for s in range(6)]
    again = [draws(mixing, (4, s)) for s in range(6)]
    for a, b in zip(first, again):
        assert a[:2] == b[:2] and (a[2] == b[2]).all() and (a[3] == b[3]).all()
    assert len({a[0] for a in first}) == 6                 # every step its own lam


@pytest.mark.parametrize('changes', [dict(mixup_alpha=0.4),
                                     dict(cutmix_alpha=1.0, label_smoothing=0.1)])
def test_the_steps_loss_is_the_cross_entropy_of_the_mixed_targets(changes):
    """The trainer's step on a uint8 batch: its cross-entropy is numpy's mean of
    -sum(t * log softmax(z)) for the mixed images and targets of step 0 (smoothed as
    t (1 - s) + s / 10), the logits z those of the weights before the step."""
    the_recipe = recipe(**changes)
    state = state_of(the_recipe)
    images, labels = batch(prepared=False)
    key = pipeline.step_key(the_recipe.seed, 0)
    prepared = pipeline.prepare_batch(tf.constant(images), MEAN, key)
    mixed, targets = pipeline.mix(prepared, tf.constant(labels), 10, key, the_recipe.mixing)
    logits = state.model(mixed, training=True).numpy().astype(np.float64)
    targets = targets.numpy() * (1 - the_recipe.label_smoothing) + the_recipe.label_smoothing / 10
    expected = -(targets * ref.log_softmax(logits)).sum(axis=1).mean()
    # The batch-norm statistics moved in the forward pass above: start from a fresh state.
    state = state_of(the_recipe)
    sums = train(state, the_recipe, [(images, labels)])
    assert sums['cross_entropy'] == pytest.approx(expected, rel=1e-4)
    major = targets.argmax(axis=1)
    assert sums['accuracy'] == pytest.approx((logits.argmax(axis=1) == major).mean())


def test_the_hosts_batches_carry_the_mixed_targets(session_data):
    the_recipe = recipe(mixup_alpha=1.0)
    data = inputs.load_training_data(TINY, the_recipe, str(session_data))
    images, targets = next(iter(inputs.training_batches(data, the_recipe, 0, True, data.mean,
                                                        10)))
    assert images.dtype == tf.float32 and targets.shape == (8, 10)
    np.testing.assert_allclose(targets.numpy().sum(axis=1), 1.0, rtol=1e-6)
    # An image drawn as its own partner stays as it is; the others are blended.
    assert (targets.numpy().max(axis=1) < 1).sum() >= 4


def test_mixing_compiles_with_xla_to_the_same_batch():
    images, labels = batch()
    mixing = Mixing(mixup_alpha=1.0, cutmix_alpha=1.0, cutmix_prob=0.5)
    compiled_mix = tf.function(lambda x, y, k: pipeline.mix(x, y, 10, k, mixing),
                               jit_compile=True)
    cuts = [draws(mixing, (2, step))[1] for step in (0, 1, 2)]
    assert cuts == [False, False, True]                 # both kinds of batch are compiled
    for step in (0, 1, 2):
        key = tf.constant((2, step), tf.int64)
        plain = pipeline.mix(tf.constant(images), tf.constant(labels), 10, key, mixing)
        compiled = compiled_mix(tf.constant(images), tf.constant(labels), key)
        for a, b in zip(plain, compiled):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-4)
