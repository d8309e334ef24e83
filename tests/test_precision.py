"""Precision and devices: the choice per device, bf16 and fp16 steps, the loss scale."""

import numpy as np
import pytest
import tensorflow as tf
from conftest import fake_gpus, quiet, tiny_options, tiny_recipe

from v2.nets import model
from v2.runtime import devices, precision
from v2.runtime.devices import Device
from v2.training import loop
from v2.training.optimizer import Momentum
from v2.training.schedule import Schedule
from v2.training.step import StepParts, Window, WindowReader, make_train_steps

TINY = model.ModelConfig(num_layers=8)
A100 = Device('GPU', 'NVIDIA A100-SXM4-80GB', (8, 0))
V100 = Device('GPU', 'Tesla V100-SXM2-16GB', (7, 0))
T4 = Device('GPU', 'Tesla T4', (7, 5))
P100 = Device('GPU', 'Tesla P100-PCIE-16GB', (6, 0))
AVX512_BF16 = Device('CPU', 'AMD EPYC', has_bf16=True)
OLD_CPU = Device('CPU', 'Intel Xeon E5', has_bf16=False)



@pytest.mark.parametrize('precision_, used, said', [
    ('float32', [AVX512_BF16], '1.6x as fast'),       # 1,061 / 674 images/s, performance.md
    ('float32', [A100], 'bfloat16 tensor cores'),
    ('float32', [A100, A100], 'bfloat16 tensor cores'),
    ('float32', [OLD_CPU], None),
    ('float32', [V100], None),                        # no bfloat16 units: nothing to gain
    ('float32', [A100, T4], None),
    ('bfloat16', [AVX512_BF16], None),                # already asked for
    ('float16', [A100], None),
])
def test_a_float32_run_on_bfloat16_units_is_told_what_bfloat16_gives(precision_, used, said):
    hint = precision.faster_hint(precision_, precision.compute_dtype(precision_, used, quiet),
                                 used)
    if said is None:
        assert hint is None
    else:
        assert hint.startswith('note: this runs in float32') and said in hint
        assert 'precision=bfloat16' in hint and '\n' not in hint


@pytest.mark.parametrize('precision_, used, dtype, warned', [
    ('float32', [P100], tf.float32, False),
    ('bfloat16', [A100], tf.bfloat16, False),
    ('bfloat16', [A100, A100], tf.bfloat16, False),
    ('bfloat16', [V100], tf.float32, True),          # emulated before Ampere: slower than fp32
    ('bfloat16', [A100, T4], tf.float32, True),      # one slow card paces them all
    ('float16', [T4], tf.float16, False),
    ('float16', [V100], tf.float16, False),
    ('float16', [P100], tf.float32, True),           # no tensor cores
    ('bfloat16', [AVX512_BF16], tf.bfloat16, False),
    ('bfloat16', [OLD_CPU], tf.float32, True),
    ('float16', [AVX512_BF16], tf.float16, True),    # kept, to try the GPU's path on a CPU
])
def test_the_precision_is_chosen_for_the_devices(precision_, used, dtype, warned):
    warnings = []
    assert precision.compute_dtype(precision_, used, warn=warnings.append) == dtype
    assert len(warnings) == warned
    if warned and dtype == tf.float32:
        assert 'training in float32 instead' in warnings[0]


def test_xla_by_default_on_gpus_only():
    assert devices.jit_by_default([A100]) and not devices.jit_by_default([AVX512_BF16])


def test_device_setup_turns_on_memory_growth_and_keeps_one_gpu(monkeypatch):
    calls = fake_gpus(monkeypatch)
    gpus = ['gpu0', 'gpu1', 'gpu2']
    used = devices.setup('default', devices=('/gpu:2',), tf32=False)
    assert [c for c in calls if c[0] == 'growth'] == [('growth', g, True) for g in gpus]
    assert ('visible', ('gpu2',)) in calls and ('tf32', False) in calls
    assert str(used[0]) == 'NVIDIA H100 80GB HBM3 (compute capability 9.0)'
    calls.clear()
    assert len(devices.setup('mirrored', tf32=True)) == 3
    assert ('visible', tuple(gpus)) in calls
    with pytest.raises(Exception, match='devices=/gpu:7: no device /gpu:7 here'):
        devices.setup('default', devices=('/gpu:7',))


def test_on_this_cpu_the_run_names_it():
    used = devices.setup('default', out=quiet)
    assert used[0].kind == 'CPU' and str(used[0]).startswith('CPU ')


def _step(dtype, loss_scale=None, rate=0.05):
    net = model.build(TINY, compute_dtype=dtype)
    parts = StepParts(model=net, optimizer=Momentum(net.trainable_variables),
                      schedule=Schedule(boundaries=(), values=(rate,)),
                      step=tf.Variable(0, dtype=tf.int64), window=Window(),
                      pixel_mean=tf.Variable(tf.fill([32, 32, 3], 120.0)),
                      loss_scale=loss_scale)
    images = tf.random.stateless_uniform([4, 32, 32, 3], [1, 2], 0, 256, tf.int32)
    batches = iter(tf.data.Dataset.from_tensors(
        (tf.cast(images, tf.uint8), tf.constant([0, 1, 2, 3]))).repeat())
    steps = make_train_steps(parts)
    read = WindowReader(parts.window, tf.distribute.get_strategy(), loss_scale=loss_scale)

    def run(n):
        steps(batches, tf.constant(n, tf.int64))
        return read()
    return net, run


def test_bfloat16_step_keeps_float32_variables_and_learns():
    net, run = _step(tf.bfloat16)
    assert net(tf.zeros([1, 32, 32, 3])).dtype == tf.float32    # logits come back float32
    losses = [run(1)['loss'] for _ in range(8)]
    assert all(v.dtype == tf.float32 for v in net.variables)
    assert np.isfinite(losses).all() and losses[-1] < losses[0]


def test_float16_overflow_skips_the_step_and_lowers_the_scale():
    scale = precision.DynamicLossScale(initial=2.0 ** 40)     # overflows float16 gradients
    net, run = _step(tf.float16, scale)
    before = [v.numpy().copy() for v in net.trainable_variables]
    window = run(1)
    assert window['skipped'] == 1 and window['loss_scale'] == 2.0 ** 39  # skipped
    for b, v in zip(before, net.trainable_variables):
        np.testing.assert_array_equal(b, v.numpy())
    window = run(30)                                         # it keeps halving until finite
    assert window['loss_scale'] < 2.0 ** 20 and window['updated'] > 0
    assert any(not np.array_equal(b, v.numpy()) for b, v in zip(before, net.trainable_variables))


def test_loss_scale_grows_after_enough_finite_steps():
    scale = precision.DynamicLossScale(initial=8.0, growth_interval=2)
    values = []
    for finite in (True, True, True, False, True, True):
        scale.update(tf.constant(finite))
        values.append(float(scale.scale))
    assert values == [8.0, 16.0, 16.0, 8.0, 8.0, 16.0]


def test_a_resumed_float16_run_goes_on_with_its_saved_loss_scale(session_data, tmp_path):
    recipe = tiny_recipe(batch_size=2, num_iterations=2, precision='float16')
    first = loop.train(TINY, recipe, tiny_options(tmp_path, log_per_iterations=1),
                       str(session_data), out=quiet)
    reader = tf.train.load_checkpoint(first.checkpoint)
    saved_scale = reader.get_tensor('loss_scale/scale/.ATTRIBUTES/VARIABLE_VALUE')
    saved_good = reader.get_tensor('loss_scale/good_steps/.ATTRIBUTES/VARIABLE_VALUE')
    assert saved_good == 2 and first.last_metrics['loss_scale'] == saved_scale
    records = []
    loop.train(TINY, tiny_recipe(batch_size=2, num_iterations=3, precision='float16'),
               tiny_options(tmp_path, log_per_iterations=1), str(session_data), out=quiet,
               on_record=lambda step, split, m: records.append(m))
    # A fresh scale would be 2^15 with 0 good steps; the restored one goes on from its own.
    resumed = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(tmp_path / 'ckpt')))
    assert resumed.get_tensor('loss_scale/good_steps/.ATTRIBUTES/VARIABLE_VALUE') == 3
    assert records[-1]['loss_scale'] == saved_scale


def test_float16_under_the_stop_policy_stops_on_a_non_finite_loss(session_data, tmp_path):
    # Overflowing gradients are skipped (the scale adapts); a non-finite loss is not.
    diverging = tiny_recipe(precision='float16', schedule=Schedule(boundaries=(),
                                                                   values=(1e30,)))
    with pytest.raises(Exception, match=r'the loss or its gradients became non-finite at step \d'):
        loop.train(TINY, diverging, tiny_options(tmp_path), str(session_data), out=quiet)
    assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')) is None
