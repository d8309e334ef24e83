"""The conv census and the conv-only bound the benchmark prints (counts and sums, not speed)."""

import tensorflow as tf
import test_benchmark

from v2.nets import model
from v2.tools import conv_timing


def by_description(convs):
    return {conv.describe(): (count, conv.image_input) for conv, count in convs.items()}


def test_census_of_resnet20_lists_every_conv_once():
    convs = conv_timing.census(model.cifar_resnet(20), batch_size=4)
    assert by_description(convs) == {
        '3x3 conv 3->16 on 32x32': (1, True),          # the stem reads the image
        '3x3 conv 16->16 on 32x32': (6, False),
        '3x3 conv 16->32 on 33x33, /2': (1, False),    # padded by one pixel: Torch's 1
        '3x3 conv 32->32 on 16x16': (5, False),
        '3x3 conv 32->64 on 17x17, /2': (1, False),
        '3x3 conv 64->64 on 8x8': (5, False)}
    # Per image: the hand count of the conv multiply-accumulates (tests/test_benchmark.py).
    flops = sum(count * conv.flops for conv, count in convs.items())
    assert flops == 4 * 2 * test_benchmark.RESNET20_CONV_MACS


def test_census_sees_projections_and_compute_dtype():
    convs = conv_timing.census(model.cifar_resnet(20, shortcut_type='B',
                                                  compute_dtype=tf.bfloat16), batch_size=2)
    described = by_description(convs)
    assert described['1x1 conv 16->32 on 32x32, /2'] == (1, False)
    assert described['1x1 conv 32->64 on 16x16, /2'] == (1, False)
    assert {conv.dtype for conv in convs} == {tf.bfloat16}


def test_bound_sums_every_pass_of_every_conv():
    bound = conv_timing.training_bound(model.cifar_resnet(8), batch_size=2, calls=1, repeats=1)
    total = 0.0
    for conv, count, passes in bound.rows:
        assert set(passes) == {'forward', 'input', 'filter'}
        assert passes['forward'] > 0 and passes['filter'] > 0
        assert (passes['input'] == 0) == conv.image_input
        total += count * sum(passes.values())
    assert abs(bound.step_seconds - total) < 1e-12
    assert bound.images_per_second == 2 / bound.step_seconds
    best = max(conv.flops / s for conv, _, passes in bound.rows for s in passes.values() if s)
    assert abs(bound.fastest - best / 1e9) < 1e-6
