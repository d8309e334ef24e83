"""gpu_report's arithmetic on the CPU: the busy share of a trace, the projection, the file."""

import pytest
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from v2.cli import app, flags
from v2.tools import benchmark, gpu_report

NAMES = {1: 'volta_sgemm', 2: 'MemcpyHtoD', 3: 'fusion_12'}


def _space(streams, names=NAMES):
    """An XSpace with one GPU plane; streams: {line name: (timestamp_ns, [(id, start_ps,
    duration_ps)])}, and a host plane whose events must be ignored."""
    space = xplane_pb2.XSpace()
    host = space.planes.add(name='/host:CPU')
    host.lines.add(name='Stream #1').events.add(metadata_id=1, offset_ps=0, duration_ps=10 ** 9)
    plane = space.planes.add(name='/device:GPU:0')
    for key, name in names.items():
        plane.event_metadata[key].id = key
        plane.event_metadata[key].name = name
    for line_name, (timestamp_ns, events) in streams.items():
        line = plane.lines.add(name=line_name, timestamp_ns=timestamp_ns)
        for key, start, duration in events:
            line.events.add(metadata_id=key, offset_ps=start, duration_ps=duration)
    return space


def test_the_busy_share_merges_overlapping_kernels_and_leaves_out_copies():
    # Stream 7: kernels at [0, 4000) and [6000, 8000) ps; the copy at [4000, 6000) is no kernel.
    # Stream 9 starts 1 ns (1000 ps) later: a kernel at [3000, 5000) overlaps the first one.
    # Derived lines ('XLA Ops') repeat the kernels and are not streams.
    space = _space({'Stream #7(Compute)': (0, [(1, 0, 4000), (2, 4000, 2000), (3, 6000, 2000)]),
                    'Stream #9': (1, [(3, 2000, 2000)]),
                    'XLA Ops': (0, [(3, 0, 8000)])})
    # Busy: [0, 5000) and [6000, 8000) = 7000 ps of the 8000 ps from first start to last end.
    assert gpu_report.busy_share(space) == pytest.approx(7000 / 8000)


def test_no_gpu_plane_or_no_kernel_is_no_figure():
    assert gpu_report.busy_share(_space({})) is None
    space = xplane_pb2.XSpace()
    space.planes.add(name='/host:CPU')
    assert gpu_report.busy_share(space) is None


def test_the_projection_of_the_papers_run():
    # 64,000 steps of 128 images at 12,800 img/s is 640 s; 64 saves of 0.5 s add 32 s.
    assert gpu_report.projected_hours(12800, 0.5) == pytest.approx((640 + 32) / 3600)


def test_the_report_lists_every_row_and_says_which_were_not_run():
    rows = [gpu_report.Row(20, 'bfloat16', True, 'bfloat16', 20000.0),
            gpu_report.Row(20, 'bfloat16', False, 'bfloat16', 15000.0, 8000.0, True),
            gpu_report.Row(110, 'float32', True, 'float32', 3200.0),
            gpu_report.Row(110, 'float32', False, note='not run: past --budget_minutes')]
    text = gpu_report.markdown(['device: NVIDIA H100 (compute capability 9.0)'],
                               ('12 passed in 100s', 0, []), rows, 0.87, 0.25,
                               benchmark.Timing(1, 5, 30), 'bfloat16')
    assert text.startswith('# NVIDIA H100 (compute capability 9.0)\n')
    assert '| ResNet-20 | bfloat16 | on | 20000 | 8000 (XLA) | 2.50x |' in text
    assert '| ResNet-20 | bfloat16 | off | 15000 | 8000 (XLA) | 1.88x |' in text
    assert '| ResNet-110 | float32 | off | not run: past --budget_minutes | | |' in text
    assert 'Busy share' in text and '87%' in text
    hours = gpu_report.projected_hours(3200, 0.25)
    assert 'at 3200 img/s (float32, XLA on), with a save every 1,000 steps: %.1f hours' % hours \
        in text


def test_on_a_machine_without_a_gpu_it_refuses_in_one_line():
    status, line = app.call(gpu_report.main, ['gpu_report'], flags.GPU_REPORT)
    assert status == 1
    assert line.startswith('gpu_report: error: TensorFlow sees no GPU here; gpu_report '
                           'measures one')
