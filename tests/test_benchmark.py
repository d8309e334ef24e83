"""The benchmark command runs end to end at a toy size (it checks what it prints, not speed)."""

from conftest import run_script
from v2 import benchmark, model


# ResNet-20's convolutions: stem 32*32*27*16, then per stage the 3x3 convs at their map sizes.
RESNET20_CONV_MACS = (32 * 32 * 27 * 16 + 6 * 32 * 32 * 9 * 16 * 16
                      + 16 * 16 * 9 * 16 * 32 + 5 * 16 * 16 * 9 * 32 * 32
                      + 8 * 8 * 9 * 32 * 64 + 5 * 8 * 8 * 9 * 64 * 64)


def test_forward_macs_match_the_hand_count():
    hand = RESNET20_CONV_MACS
    assert abs(benchmark.forward_macs(model.cifar_resnet(20)) - hand) / hand < 0.01


def test_window_rates():
    times = [0.0, 1.0, 2.0, 3.0, 5.0, 7.0]          # step end times
    assert benchmark.window_rates(times, 10, warmup=2, windows=2, steps=2) == [10.0, 5.0]


def test_benchmark_prints_every_figure(tiny_data):
    run = run_script('v2.benchmark', '--num_layers=8', '--batch_size=8', '--warmup_steps=2',
                     '--windows=2', '--window_steps=2', '--data_path=%s' % tiny_data,
                     '--precision=bfloat16', '--keras_precision=float32')
    assert run.returncode == 0, run.stderr
    for line in ('trainer (real pipeline', 'same step, one in-memory batch', 'input pipeline cost',
                 'evaluation, batches of 1000', 'peak resident memory',
                 'Keras 3 model.fit, float32', 'trainer / Keras', 'GFLOP/s',
                 'each convolution alone', 'convolutions alone', 'conv ceiling'):
        assert line in run.stdout, line
