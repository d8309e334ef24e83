"""Every setting of the recipe reaches the numbers, through the trainer's own assembly.

Each test builds the training state and the step as the trainer does (TrainState.create,
train_steps, window_reader), changes one setting, and checks the numbers that
setting must change against a value computed here (numpy, or a formula in the
docstring), and, where it matters, that nothing else changed. A setting dropped or
mis-wired between the recipe and the computation fails its test, even where every
path of the code would agree with every other.

The batches are float32, already prepared, unless a test is about preparing them:
the step then computes exactly what numpy is given.
"""

import types

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from conftest import quiet, tiny_options, tiny_recipe

from v2.data import cifar, pipeline
from v2.nets import model
from v2.nets.model import ModelConfig
from v2.runtime import distribution
from v2.training import inputs, loop
from v2.training.options import RunOptions
from v2.training.recipe import Recipe
from v2.training.schedule import Schedule
from v2.training.state import TrainState

TINY = ModelConfig(num_layers=8)
MEAN = np.full([32, 32, 3], 120.0, np.float32)
ONE = distribution.Cluster(tf.distribute.get_strategy(), 'default')
# A move of a weight of size ~1 read as the difference of two float32 values is exact to
# about two of their ulps (2 * 2**-23 ~ 2.4e-7).
FLOAT32_MOVE = 3e-7


def recipe(**changes):
    settings = dict(batch_size=8, num_iterations=10, weight_decay=1e-3,
                    schedule=Schedule(boundaries=(), values=(0.1,)))
    settings.update(changes)
    return Recipe(**settings)


def batch(seed=0, size=8, prepared=True):
    """Random images and labels; prepared: mean-subtracted float32, as the host path feeds."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (size, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, size).astype(np.int32)
    return (images.astype(np.float32) - MEAN if prepared else images), labels


def state_of(the_recipe, cluster=ONE, config=TINY):
    return TrainState.create(config, the_recipe, strategy=cluster.strategy, dtype=tf.float32,
                             mean=MEAN)


def train(state, the_recipe, batches, steps=1, cluster=ONE):
    """Runs `steps` steps of the trainer's traced step (the state's recipe, which is
    `the_recipe`); returns the window's sums by name."""
    assert state.recipe == the_recipe and state.strategy is cluster.strategy
    train_steps = state.train_steps()
    data = tf.data.Dataset.from_tensor_slices(tuple(np.stack(b) for b in zip(*batches)))
    if cluster.distributed:
        data = cluster.strategy.experimental_distribute_dataset(
            data.unbatch().batch(the_recipe.batch_size))
    train_steps(iter(data), tf.constant(steps, tf.int32))
    return state.window_reader()()


def weights(net):
    return [v.numpy().astype(np.float64) for v in net.trainable_variables]


def decay_term(net, weight_decay):
    """weight_decay * sum ||w||^2 / 2 over the conv and linear kernels (the papers' L2)."""
    return weight_decay * sum((w.numpy().astype(np.float64) ** 2).sum() / 2
                              for w in model.decayed_weights(net))


def test_the_same_seed_gives_the_same_weights_and_another_seed_others():
    a, b, c = (weights(state_of(recipe(seed=s)).model) for s in (1, 1, 2))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    kernels = [i for i, w in enumerate(a) if w.ndim == 4]
    assert all(not np.array_equal(a[i], c[i]) for i in kernels)


def test_nesterov_moves_the_first_step_by_one_plus_the_momentum():
    """From a zero momentum buffer the first update is lr * g without Nesterov and
    lr * (g + m * g) with it (Sutskever et al. 2013, as TensorFlow's kernel applies it)."""
    moves = {}
    for nesterov in (False, True):
        state = state_of(recipe(nesterov=nesterov, momentum=0.9))
        before = weights(state.model)
        train(state, recipe(nesterov=nesterov), [batch()])
        moves[nesterov] = [b - a for a, b in zip(before, weights(state.model))]
    for plain, nesterov in zip(moves[False], moves[True]):     # to float32's resolution
        np.testing.assert_allclose(nesterov, 1.9 * plain, rtol=1e-3, atol=FLOAT32_MOVE)
    total = [sum(np.abs(m).sum() for m in moves[n]) for n in (False, True)]
    assert total[1] / total[0] == pytest.approx(1.9, rel=1e-3)


def test_the_momentum_carries_the_last_gradient_into_the_next_step():
    """Rate 1e-30 at step 0, 0.1 after: the weights stay (to 1e-30), the buffer holds g;
    step 1 sees the same weights and batch, so g again: buffer m*g + g, and the weights
    move 0.1*(1+m)*g."""
    the_recipe = recipe(momentum=0.5, schedule=Schedule(boundaries=(1,), values=(1e-30, 0.1)))
    state = state_of(the_recipe)
    before = weights(state.model)
    train(state, the_recipe, [batch()])
    g = [a.numpy().astype(np.float64) for a in state.optimizer.accumulators]
    for a, b in zip(before, weights(state.model)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-25)
    train(state, the_recipe, [batch()])
    for w0, w2, grad in zip(before, weights(state.model), g):
        np.testing.assert_allclose(w0 - w2, 0.1 * 1.5 * grad, rtol=1e-3, atol=FLOAT32_MOVE)


@pytest.mark.parametrize('weight_decay, smoothing', [(3e-3, 0.0), (0.0, 0.2), (1e-4, 0.1)])
def test_the_loss_is_the_recipes_cross_entropy_plus_its_decay(weight_decay, smoothing):
    the_recipe = recipe(weight_decay=weight_decay, label_smoothing=smoothing)
    state = state_of(the_recipe)
    images, labels = batch()
    logits = state.model(tf.constant(images), training=True).numpy()
    cross_entropy = ref.softmax_cross_entropy(logits, labels, smoothing).mean()
    l2 = decay_term(state.model, weight_decay)
    sums = train(state, the_recipe, [(images, labels)])
    assert sums['cross_entropy'] == pytest.approx(cross_entropy, rel=1e-4)
    assert sums['l2_loss'] == pytest.approx(l2, rel=1e-4, abs=1e-9)
    assert sums['loss'] == pytest.approx(cross_entropy + l2, rel=1e-4)


def test_batch_norms_momentum_sets_the_statistics_after_a_step():
    """The first BN sees the stem's output x; after one step from (0, 1) its statistics are
    (1-m) * mean(x) and m + (1-m) * var(x) with the unbiased variance (Ioffe & Szegedy 2015,
    as TensorFlow's fused kernel keeps it)."""
    the_recipe = recipe(bn_momentum=0.6)
    state = state_of(the_recipe)
    images, labels = batch()
    x = ref.conv(images.astype(np.float64), state.model.stem.kernel.numpy())
    bn = state.model.stages[0][0].bn1
    train(state, the_recipe, [(images, labels)])
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.4 * x.mean(axis=(0, 1, 2)),
                               rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(),
                               0.6 + 0.4 * x.var(axis=(0, 1, 2), ddof=1), rtol=1e-4)


def test_zero_initialised_branches_start_every_unit_as_its_shortcut():
    for zero in (True, False):
        net = state_of(recipe(zero_init_residual=zero)).model
        last = [unit.conv2.kernel.numpy() for units in net.stages for unit in units]
        assert all(not k.any() for k in last) is zero
        assert net.stem.kernel.numpy().any()                 # nothing else is zeroed


def test_weight_averages_move_by_their_rate_at_the_step():
    """At step 0 the averages keep d = min(decay, (1 + 0) / (10 + 0)) of the old value; with
    decay 0.05 that is the decay itself: average = 0.05 * w0 + 0.95 * w1."""
    the_recipe = recipe(ema_decay=0.05)
    state = state_of(the_recipe)
    before = [v.numpy().astype(np.float64) for v in state.model.variables]
    train(state, the_recipe, [batch()])
    for w0, w1, average in zip(before, state.model.variables, state.ema.averages):
        np.testing.assert_allclose(average.numpy(), 0.05 * w0 + 0.95 * w1.numpy(), rtol=1e-5,
                                   atol=1e-7)


@pytest.mark.parametrize('policy', ['stop', 'skip_step'])
def test_a_non_finite_step_is_skipped_or_marked_as_the_recipe_says(policy):
    the_recipe = recipe(nan_policy=policy)
    state = state_of(the_recipe)
    before = weights(state.model)
    images, labels = batch()
    images[0, 0, 0, 0] = np.nan
    sums = train(state, the_recipe, [(images, labels)])
    if policy == 'skip_step':
        assert (sums['updated'], sums['skipped'], sums['first_bad']) == (0, 1, -1)
        assert all(np.array_equal(a, b) for a, b in zip(before, weights(state.model)))
    else:
        assert sums['first_bad'] == 0


def test_the_step_prepares_uint8_batches_with_the_recipes_seed_and_cutout():
    """uint8 batches are cropped, flipped (and cut out) in the step, keyed by the recipe's
    seed: from the same weights and images another seed or a cutout gives another loss,
    the same recipe the same loss."""
    losses = []
    start = weights(state_of(recipe(seed=1)).model)
    for changes in (dict(seed=1), dict(seed=1), dict(seed=2), dict(seed=1, cutout=16)):
        state = state_of(recipe(**changes))
        for variable, value in zip(state.model.trainable_variables, start):
            variable.assign(value)
        losses.append(train(state, recipe(**changes), [batch(prepared=False)])['loss'])
    assert losses[0] == losses[1] and losses[2] != losses[0] and losses[3] != losses[0]


def test_cutout_reaches_the_steps_batches(session_data):
    """The same crops and flips (one seed, one step), then a square of zeros (the mean
    pixel) in each image: more zero pixels than the crop's padding alone, at most a
    size x size square more."""
    data = inputs.load_training_data(TINY, recipe(), str(session_data))
    zeros = {}
    for size in (0, 8):
        batches = inputs.training_batches(data, recipe(cutout=size), 0, True, data.mean)
        images, _ = next(iter(batches))
        zeros[size] = (images.numpy() == 0).all(axis=-1).sum(axis=(1, 2))
    extra = zeros[8] - zeros[0]
    assert (extra >= 0).all() and (extra <= 64).all() and (extra > 0).sum() >= 6


@pytest.mark.parametrize('on_host', [True, False])
def test_the_seed_picks_the_data_order(session_data, on_host):
    data = inputs.load_training_data(TINY, recipe(), str(session_data))

    def first_labels(seed):
        batches = inputs.training_batches(data, recipe(seed=seed, batch_size=16), 0, on_host,
                                        data.mean)
        return [labels.numpy().tolist() for _, labels in batches.take(3)]
    assert first_labels(1) == first_labels(1) != first_labels(2)


def test_two_replicas_share_out_the_loss_and_the_decay_by_the_global_batch(two_replicas):
    """Mirrored over the two logical CPUs (conftest) with pooled batch statistics, one step
    must be the one-device step: each replica's cross-entropy is averaged over the GLOBAL
    batch of 8 and its decay halved, so the summed gradients are the batch's. A replica
    averaging over its own 4 images, or adding the whole decay, moves the weights twice as
    far in that term (wd = 0.05 makes the decay's share a hundred times the float noise)."""
    the_recipe = recipe(weight_decay=0.05, sync_batch_norm=True)
    mirrored = two_replicas
    images, labels = batch()
    one, two = state_of(the_recipe), state_of(the_recipe, mirrored)
    logits = one.model(tf.constant(images), training=True).numpy()
    cross_entropy = ref.softmax_cross_entropy(logits, labels).mean()
    l2 = decay_term(one.model, 0.05)
    for state, cluster in ((one, ONE), (two, mirrored)):
        sums = train(state, the_recipe, [(images, labels)], cluster=cluster)
        assert sums['cross_entropy'] == pytest.approx(cross_entropy, rel=1e-4)
        assert sums['l2_loss'] == pytest.approx(l2, rel=1e-4)
    for a, b in zip(weights(one.model), weights(two.model)):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6)


def test_two_replicas_keep_the_mean_of_their_batch_norm_statistics(two_replicas, tmp_path):
    """Mirrored over the two logical CPUs with per-replica batch norm (the default) and
    weight averages: one step from (0, 1) with momentum 0.6 leaves replica r's first BN
    (it sees the stem's output x_r of its 4 images) at 0.4 * mean(x_r) and 0.6 + 0.4 *
    var(x_r) (unbiased). What the run keeps is the mean over the two replicas: in its
    checkpoint, in the net its evaluation (actions.Evaluate) builds, and in the averages
    (d = min(0.05, 1/10) at step 0: 0.05 * start + 0.95 * statistics), which the evaluator
    loads from the checkpoint."""
    from v2.evaluation import evaluate
    from v2.training import actions
    the_recipe = recipe(bn_momentum=0.6, ema_decay=0.05)
    mirrored = two_replicas
    state = state_of(the_recipe, mirrored)
    images, labels = batch()
    x = [ref.conv(images[r * 4:(r + 1) * 4].astype(np.float64), state.model.stem.kernel.numpy())
         for r in range(2)]
    train(state, the_recipe, [(images, labels)], cluster=mirrored)
    live = (np.mean([0.4 * b.mean(axis=(0, 1, 2)) for b in x], axis=0),
            np.mean([0.6 + 0.4 * b.var(axis=(0, 1, 2), ddof=1) for b in x], axis=0))
    averaged = (0.95 * live[0], 0.05 + 0.95 * live[1])
    assert np.abs(live[0] - 0.4 * x[0].mean(axis=(0, 1, 2))).max() > 1e-2   # not replica 0's

    def statistics(net):
        bn = net.stages[0][0].bn1
        return bn.moving_mean.numpy(), bn.moving_variance.numpy()

    def check(got, expected):
        np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got[1], expected[1], rtol=1e-4)
    prefix = state.checkpoint().save(str(tmp_path / 'ckpt'))
    restored = model.build(TINY)                       # TensorFlow's reading of the checkpoint
    tf.train.Checkpoint(model=restored).read(prefix).expect_partial()
    check(statistics(restored), live)
    check(statistics(evaluate.load_network(prefix, out=quiet)[0]), averaged)
    evaluation = types.SimpleNamespace(evaluation=(np.zeros([2, 32, 32, 3], np.uint8),
                                                   labels[:2]), evaluation_split='test')
    action = actions.Evaluate(state=state, data=evaluation,
                              options=RunOptions('unused', eval_every=1, eval_batch_size=2),
                              writer=tf.summary.create_noop_writer(), out=quiet)
    action(1)
    check(statistics(action.net), averaged)


def test_the_validation_figures_are_those_of_the_held_out_images(session_data, tmp_path):
    """With validation_split=16 the last 16 training images (as numpy reads the files) are
    evaluated: their cross-entropy and accuracy, from numpy's forward pass of the final
    weights in evaluation mode with the run's own pixel mean, are what the run records."""
    records = []
    result = loop.train(TINY, tiny_recipe(validation_split=16, num_iterations=4),
                        tiny_options(tmp_path, eval_every=4), str(session_data), out=quiet,
                        on_record=lambda step, split, m: records.append((split, m)))
    raw = np.concatenate([np.fromfile(session_data / name, np.uint8).reshape(-1, 3073)
                          for name in cifar.CIFAR10.train_files])
    images = raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float64)
    labels = raw[:, 0].astype(np.int64)
    mean = images[:-16].mean(axis=0)
    net, _ = loop_net(result.checkpoint)
    logits = ref.preact_resnet_logits(net, images[-16:] - mean)
    (split, figures), = [r for r in records if r[0] != 'train']
    assert split == 'validation'
    assert figures['cross_entropy'] == pytest.approx(
        ref.softmax_cross_entropy(logits, labels[-16:]).mean(), rel=1e-4)
    assert figures['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == labels[-16:]))


def loop_net(prefix):
    from v2.evaluation import evaluate
    return evaluate.load_network(prefix, out=quiet)


def test_the_published_md5_sums_of_the_archives():
    """The MD5 sums the CIFAR page publishes for the binary versions (Krizhevsky 2009)."""
    from v2.data import download
    assert download.SOURCES['cifar10'][1] == 'c32a1d4ab5d03f1284b67883e8d87530'
    assert download.SOURCES['cifar100'][1] == '03b5dce01913d631647c71ecec9e9cb8'
    assert download.SOURCES['cifar10'][0].endswith('/cifar-10-binary.tar.gz')
    assert download.SOURCES['cifar100'][0].endswith('/cifar-100-binary.tar.gz')


def test_the_training_batches_are_the_crops_and_flips_their_offsets_name():
    """The offsets and flips drawn with TensorFlow's stateless Philox from the step's key,
    applied by numpy to the zero-padded images, give the pipeline's batch."""
    rng = np.random.default_rng(4)
    images = rng.normal(size=(6, 32, 32, 3)).astype(np.float32)
    key = pipeline.step_key(5, 9)
    got = pipeline.augment(tf.constant(images), key).numpy()
    crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(key, 2, alg='philox'))
    offsets = tf.random.stateless_uniform([6, 2], crop_key, minval=0, maxval=9, dtype=tf.int32,
                                          alg='philox').numpy()
    flips = tf.random.stateless_uniform([6, 1], flip_key, minval=0, maxval=2, dtype=tf.int32,
                                        alg='philox').numpy()
    padded = np.pad(images, [(0, 0), (4, 4), (4, 4), (0, 0)])
    for i, ((row, col), (flip,)) in enumerate(zip(offsets, flips)):
        crop = padded[i, row:row + 32, col:col + 32]
        np.testing.assert_array_equal(got[i], crop[:, ::-1] if flip else crop)
    assert len({tuple(o) for o in offsets}) > 1 and 0 < flips.sum() < 6     # it does vary


def _numpy_split(folder, names):
    raw = np.concatenate([np.fromfile(folder / name, np.uint8).reshape(-1, 3073)
                          for name in names])
    return (raw[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).astype(np.float64),
            raw[:, 0].astype(np.int64))


@pytest.mark.parametrize('tta', [False, True])
def test_the_evaluators_figures_are_numpys_forward_pass_in_evaluation_mode(trained, session_data,
                                                                         tta):
    """The trained ResNet-8 (batch-norm statistics of 6 steps, the training set's mean) on
    the test set: numpy's forward pass with the moving statistics (and, with tta, the mean
    of the logits of each image and its mirror) gives the evaluator's figures."""
    from v2.evaluation import evaluate
    prefix = tf.train.latest_checkpoint(str(trained / 'ckpt'))
    train_images, _ = _numpy_split(session_data, cifar.CIFAR10.train_files)
    images, labels = _numpy_split(session_data, cifar.CIFAR10.test_files)
    x = images - train_images.mean(axis=0)
    net, _ = loop_net(prefix)
    logits = ref.preact_resnet_logits(net, x)
    if tta:
        logits = (logits + ref.preact_resnet_logits(net, x[:, :, ::-1])) / 2
    result, = evaluate.evaluate_checkpoints(prefix, evaluate.EvalOptions(
        data_path=str(session_data), tta=tta), out=quiet).results
    metrics = result.metrics
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (labels, logits.argmax(-1)), 1)
    assert metrics.cross_entropy == pytest.approx(
        ref.softmax_cross_entropy(logits, labels).mean(), rel=1e-4)
    assert metrics.confusion == confusion.tolist()
    ece, brier = ref.calibration(logits, labels)
    assert metrics.calibration.ece == pytest.approx(ece, abs=1e-5)
    assert metrics.calibration.brier == pytest.approx(brier, rel=1e-4)
    assert metrics.calibration.nll == pytest.approx(metrics.cross_entropy, rel=1e-5)


def test_a_resumed_run_goes_on_from_the_checkpoints_weight_averages(session_data, tmp_path):
    """Restoring a run with weight averages gives its averages the values the checkpoint
    holds (read with TensorFlow's checkpoint reader), not the new net's random start."""
    from v2.runtime import checkpoint
    the_recipe = tiny_recipe(num_iterations=4, ema_decay=0.9)
    first = loop.train(TINY, the_recipe, tiny_options(tmp_path), str(session_data), out=quiet)
    reader = tf.train.load_checkpoint(first.checkpoint)
    state = state_of(the_recipe)
    state.restore(checkpoint.Saved(first.checkpoint), quiet)
    saved = {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
             if k.startswith('ema/')}
    assert len(saved) == len(state.ema.averages)
    for average in state.ema.averages:
        matches = [k for k, v in saved.items() if v.shape == tuple(average.shape)
                   and np.array_equal(v, average.numpy())]
        assert matches, average.name
    assert any(not np.array_equal(a.numpy(), w.numpy())          # the averages are their own
               for a, w in zip(state.ema.averages, state.model.variables))


def _flags_of(argv, read):
    """What `read()` gives after the trainer's flags parse `argv` (in this process)."""
    from v2.cli import app, flags
    got = []
    status, line = app.call(lambda _: got.append(read()), ['run_trainer.py', *argv],
                            flags.TRAINER)
    assert status == 0, line
    return got[0]


def test_coarse_labels_read_the_coarse_byte_of_cifar100(tmp_path):
    """CIFAR-100 records are a coarse label byte, a fine label byte and 3072 pixels."""
    from v2.cli import flags
    rng = np.random.default_rng(0)
    for name, count in (('train.bin', 12), ('test.bin', 4)):
        records = rng.integers(0, 256, (count, 3074), dtype=np.uint8)
        records[:, 0] = rng.integers(0, 20, count)
        records[:, 1] = rng.integers(0, 100, count)
        records.tofile(tmp_path / name)
    written = np.fromfile(tmp_path / 'train.bin', np.uint8).reshape(-1, 3074)
    for extra, column, classes in ((['--coarse_labels'], 0, 20), ([], 1, 100)):
        config = _flags_of(['--dataset=cifar100', *extra], flags.model_config)
        assert config.num_classes == classes
        data = inputs.load_training_data(config, recipe(), str(tmp_path))
        assert data.labels.numpy().tolist() == written[:, column].tolist()


def test_the_schedule_flags_reach_the_rate_of_every_step():
    """Cosine: lr/2 * (1 + cos(pi * t / T)) after the warm-up; linear warm-up: equal
    steps from warmup_lr to the first rate (Goyal et al. 2017)."""
    from v2.cli import flags
    cosine = _flags_of(['--lr_decay=cosine', '--lr_values=0.2', '--num_iterations=100'],
                       flags.recipe).schedule
    assert float(cosine(tf.constant(50, tf.int64))) == pytest.approx(0.1, rel=1e-5)
    assert float(cosine(tf.constant(25, tf.int64))) == pytest.approx(
        0.1 * (1 + np.cos(np.pi / 4)), rel=1e-5)
    warm = _flags_of(['--warmup=linear', '--warmup_iterations=4', '--warmup_lr=0.02',
                      '--lr_values=0.1,0.01', '--lr_boundaries=50'], flags.recipe).schedule
    assert [float(warm(tf.constant(t, tf.int64))) for t in (0, 2, 4, 49, 50)] == pytest.approx(
        [0.02, 0.06, 0.1, 0.1, 0.01])


def test_the_strided_padding_reaches_the_built_net():
    """symmetric pads a stride-2 conv's input by one pixel as Torch does (33 x 33 seen);
    TensorFlow's SAME pads only after (32 x 32 seen, no pixel added before)."""
    from v2.tools import conv_timing
    seen = {}
    for padding in ('symmetric', 'tf_same'):
        net = model.build(ModelConfig(num_layers=8, strided_padding=padding))
        seen[padding] = sorted(c.describe() for c in conv_timing.census(net, 1) if
                               dict(c.attrs)['strides'][1] == 2)
    assert seen['symmetric'] == ['3x3 conv 16->32 on 33x33, /2', '3x3 conv 32->64 on 17x17, /2']
    assert seen['tf_same'] == ['3x3 conv 16->32 on 32x32, /2', '3x3 conv 32->64 on 16x16, /2']


def test_the_evaluator_evaluates_the_averages_or_the_live_weights_as_asked(session_data,
                                                                           tmp_path):
    """A run with weight averages: EvalOptions(averaged=...) gives numpy's forward
    pass of the averaged weights by default and of the live weights with averaged=False."""
    from v2.evaluation import evaluate
    run = loop.train(TINY, tiny_recipe(num_iterations=4, ema_decay=0.5), tiny_options(tmp_path),
                     str(session_data), out=quiet)
    train_images, _ = _numpy_split(session_data, cifar.CIFAR10.train_files)
    images, labels = _numpy_split(session_data, cifar.CIFAR10.test_files)
    x = images - train_images.mean(axis=0)
    entropies = {}
    for averaged in (True, False):
        net, _ = evaluate.load_network(run.checkpoint, averaged=averaged, out=quiet)
        expected = ref.softmax_cross_entropy(ref.preact_resnet_logits(net, x), labels).mean()
        result, = evaluate.evaluate_checkpoints(run.checkpoint, evaluate.EvalOptions(
            data_path=str(session_data), averaged=averaged), out=quiet).results
        assert result.metrics.cross_entropy == pytest.approx(expected, rel=1e-4)
        entropies[averaged] = expected
    assert entropies[True] != pytest.approx(entropies[False], rel=1e-3)   # they do differ
