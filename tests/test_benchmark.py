"""The benchmark's figures: its MAC count, its windows, and a run at toy size (not speed)."""

import pytest
from conftest import quiet

from v2.cli import app
from v2.nets import model
from v2.tools import benchmark, flags

# ResNet-20's convolutions: stem 32*32*27*16, then per stage the 3x3 convs at their map sizes.
RESNET20_CONV_MACS = (32 * 32 * 27 * 16 + 6 * 32 * 32 * 9 * 16 * 16
                      + 16 * 16 * 9 * 16 * 32 + 5 * 16 * 16 * 9 * 32 * 32
                      + 8 * 8 * 9 * 32 * 64 + 5 * 8 * 8 * 9 * 64 * 64)


def test_multiply_adds_are_the_hand_count():
    # The convolutions, and the linear layer's 64 x 10.
    assert model.multiply_adds(model.cifar_resnet(20)) == RESNET20_CONV_MACS + 64 * 10


def test_timing_drops_the_warmup_windows():
    timing = benchmark.Timing(warmup_windows=2, windows=3, steps=10)
    assert timing.total_steps == 50
    assert timing.timed([1, 2, 3, 4, 5]) == [3, 4, 5]


@pytest.mark.slow
def test_benchmark_prints_every_figure(session_data, capsys):
    status, line = app.call(benchmark.main, [
        'benchmark', '--num_layers=8', '--batch_size=8', '--warmup_steps=2', '--windows=2',
        '--window_steps=2', '--data_path=%s' % session_data, '--precision=bfloat16',
        '--keras_precision=float32'], flags.BENCHMARK)
    assert status == 0, line
    out = capsys.readouterr().out
    assert out.startswith('device: CPU ')
    for text in ('trainer (real pipeline', 'same step, one in-memory batch',
                 'input pipeline cost', 'evaluation, batches of 1000', 'peak resident memory',
                 'Keras 3 model.fit, float32', 'trainer / Keras', 'GFLOP/s',
                 'each convolution alone', 'convolutions alone', 'conv ceiling'):
        assert text in out, text
    quiet(out)


def test_step_variants_refuses_an_unknown_variant_in_one_line():
    from v2.tools import step_variants
    status, line = app.call(step_variants.main, ['step_variants.py', '--num_layers=8',
                                                 '--variants=trainer,fused'], flags.STEP_VARIANTS)
    assert status == 1
    assert line == ('step_variants.py: error: --variants=fused: expected some of trainer,xla,'
                    'custom_gradient,no_onednn,no_remapper,layout_optimizer_on,'
                    'layout_optimizer_off')


@pytest.mark.parametrize('steps, per_call, expected', [
    (30, 20, [20, 10]), (30, 10, [10, 10, 10]), (30, 1, [1] * 30), (5, 20, [5])])
def test_a_window_runs_exactly_its_steps_whatever_the_steps_per_call(steps, per_call, expected):
    # A window of 30 steps in calls of 20 is one call of 20 and one of 10: 30 steps, not 40.
    assert benchmark.calls(steps, per_call) == expected


def test_the_benchmark_refuses_multi_worker_in_one_line():
    status, line = app.call(benchmark.main, ['benchmark', '--distribution_strategy=multi_worker'],
                            flags.BENCHMARK)
    assert status == 1 and 'the benchmark times one machine' in line
