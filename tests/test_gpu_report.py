"""gpu_report on the CPU: its arithmetic, its page, its deadline and its signals.

The plan, the deadline, the page and the signal handling are run here against a
stand-in worker (a few lines of Python that answer each request after a given
delay, without TensorFlow), so that they are tested in seconds; the slow tier runs
the real rehearsal (`--rehearse`, the same code with the real worker on the CPU).
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
from conftest import ROOT
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from v2.cli import app
from v2.tools import flags, gpu_page, gpu_report, gpu_trace

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
    assert gpu_trace.busy_share(space) == pytest.approx(7000 / 8000)


def test_no_gpu_plane_or_no_kernel_is_no_figure():
    assert gpu_trace.busy_share(_space({})) is None
    space = xplane_pb2.XSpace()
    space.planes.add(name='/host:CPU')
    assert gpu_trace.busy_share(space) is None


def test_the_projection_of_the_papers_run():
    # 64,000 steps of 128 images at 12,800 img/s is 640 s; 64 saves of 0.5 s add 32 s.
    assert gpu_page.projected_hours(12800, 0.5) == pytest.approx((640 + 32) / 3600)


def test_peaks_by_card_name_and_precision():
    """NVIDIA's dense data-sheet peaks; the A10 is not an A100, the PCIe H100 not the SXM."""
    assert gpu_page.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16', True) == 989
    assert gpu_page.peak_tflops('NVIDIA H200', 'float32', True) == 495        # TF32
    assert gpu_page.peak_tflops('NVIDIA H200', 'float32', False) == 67
    assert gpu_page.peak_tflops('NVIDIA H100 PCIe', 'bfloat16', True) == 756
    assert gpu_page.peak_tflops('NVIDIA A100-SXM4-40GB', 'bfloat16', True) == 312
    assert gpu_page.peak_tflops('NVIDIA A10', 'bfloat16', True) == 125
    assert gpu_page.peak_tflops('Tesla T4', 'float16', True) == 65
    assert gpu_page.peak_tflops('Tesla T4', 'bfloat16', True) is None
    assert gpu_page.peak_tflops('CPU AMD EPYC', 'float32', False) is None


def test_the_flops_check_flags_an_impossible_rate_and_a_tiny_one():
    # ResNet-20: 40.55M multiply-adds a forward pass, 6 FLOPs each a training image = 0.243 GFLOP.
    flops = 6 * 40.55e6
    achieved, share, warning = gpu_page.flops_check(5e6, flops, 989)   # 1,217 TFLOP/s
    assert achieved == pytest.approx(5e6 * flops / 1e12)
    assert share > 1 and 'above the card\'s peak' in warning
    _, share, warning = gpu_page.flops_check(1000, flops, 989)          # 0.24 TFLOP/s
    assert share < 0.01 and 'under 1%' in warning
    assert gpu_page.flops_check(50000, flops, 989)[2] == ''            # 12.2 TFLOP/s, 1.2%
    assert gpu_page.flops_check(50000, flops, None)[1:] == (None, '')


def test_a_card_without_machine_code_in_the_wheel_is_warned_about():
    built = ['sm_60', 'sm_70', 'sm_80', 'sm_89', 'compute_90']
    assert gpu_page.compile_warnings((8, 0), built, '12.5.1', '550.54.15') == []
    assert gpu_page.compile_warnings((8, 6), built, '12.5.1', '550.54.15') == []   # sm_80's code
    assert gpu_page.compile_warnings((7, 5), built, '12.5.1', '550.54.15') == []   # T4: sm_70's
    assert len(gpu_page.compile_warnings((12, 0), built, '12.5.1', '570.86')) == 1
    lines = gpu_page.compile_warnings((9, 0), built, '12.5.1', '560.35.03')
    assert len(lines) == 1 and 'no machine code for sm_90' in lines[0]
    old = gpu_page.compile_warnings((9, 0), built, '12.5.1', '550.54.15')
    assert len(old) == 2 and 'driver 550.54.15 is older than 555.42.02' in old[1]


# --- the plan, the page, the deadline and the signals, with a stand-in worker -------------

FAKE_WORKER = r'''
import json, os, sys, time
delays = json.loads(os.environ['FAKE_DELAYS'])
print(json.dumps({'ready': True, 'import_s': 0.0, 'devices': ['CPU stand-in']}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    kind, args = request['kind'], request['args']
    time.sleep(delays.get(kind, 0.0))
    if kind == os.environ.get('FAKE_DIE'):
        sys.exit(3)
    if kind == 'device':
        answer = {'devices': ['CPU stand-in'], 'name': 'NVIDIA H100 80GB HBM3', 'kind': 'GPU',
                  'compute_capability': [9, 0], 'first_op_s': 0.1, 'plain_steps_s': [0.1, 0.01],
                  'xla_steps_s': [0.2, 0.01], 'computed': 'bfloat16', 'tf32': True}
    elif kind == 'row':
        answer = {'rates': [1000.0, 1100.0], 'computed': args['precision'], 'xla': args['xla'],
                  'tf32': True, 'peak_mib': 100.0, 'train_flops': 1e9, 'first_line': '',
                  'busy': 0.5 if args['profile'] else None, 'profiled': args['profile']}
    elif kind == 'keras':
        answer = {'rates': [500.0], 'computed': args['precision'], 'xla': True, 'peak_mib': 1.0}
    else:
        answer = {'seconds': 0.25, 'bytes': 1000}
    if kind == os.environ.get('FAKE_EMPTY'):
        answer['rates'] = []
    print(json.dumps(answer), flush=True)
'''


def markdown_ok(text):
    """The page is whole Markdown: a title, and every table row as wide as its header."""
    lines = text.splitlines()
    assert lines[0].startswith('# ') and text.endswith('\n')
    width = None
    for line in lines:
        if line.startswith('|'):
            cells = line.count('|') - 1
            width = width or cells
            assert cells == width, line
            if set(line) <= set('|-: '):
                assert re.fullmatch(r'\|(?:-{3}:?\|)+', line), line
        else:
            width = None
    return True


def report(tmp_path, delays, budget_s=60.0, die=None, checkout=None, empty=None):
    """A Report of the rehearsal plan whose worker is the stand-in above."""
    env = dict(os.environ, FAKE_DELAYS=json.dumps(delays), FAKE_DIE=die or '',
               FAKE_EMPTY=empty or '')
    sizes = gpu_report.REHEARSAL_SIZES
    pages = []

    class Checked(gpu_report.Report):
        def write(self):
            text = super().write()
            with open(self.page) as f:
                assert f.read() == text
            pages.append(text)
            return markdown_ok(text) and text
    started = time.monotonic()
    result = Checked(
        parts=[gpu_report.device_part(sizes, str(tmp_path))]
        + gpu_report.plan(sizes, 'bfloat16', 'data', str(tmp_path)),
        page=str(tmp_path / 'gpu_test.md'), deadline=started + budget_s, budget_s=budget_s,
        title='GPU report: test', header=['a machine'], command='gpu_report', rehearsal=False,
        worker_argv=[sys.executable, '-c', FAKE_WORKER], worker_env=env,
        log_path=str(tmp_path / 'worker.log'), sizes=sizes, data_path='data',
        folder=str(tmp_path), checkout=checkout, timing_note='timed so.',
        sampler=gpu_report.Sampler(None), started=started, out=lambda line: None)
    return result, pages


def test_every_part_runs_and_the_page_is_whole_after_each(tmp_path):
    run, pages = report(tmp_path, {})
    status = run.run()
    assert [p.status for p in run.parts[:-1]] == ['done'] * (len(run.parts) - 1)
    # The tier needs a checkout's tests/: here there is none, so it is not available.
    assert run.parts[-1].status == 'failed' and 'not a checkout' in run.parts[-1].why
    assert status == 1
    assert len(pages) >= len(run.parts)           # written before and after every part
    text = pages[-1]
    assert '| ResNet-8 | bfloat16 | on | 1 | 1050 | 1000-1100 |' in text
    assert '| ResNet-8 | bfloat16 | on | 3 | 1050 |' in text     # the steps-per-call row
    assert 'busy 50% (kernel time over the span from the first kernel to the last)' in text
    # The projection: ResNet-20 (the stand-in for 110) at 1050 img/s, batch 16, 64 saves.
    hours = gpu_page.projected_hours(1050, 0.25, 16)
    assert 'take %.2f hours, with a save every 1,000 steps (0.25 s each)' % hours in text
    assert text.index('Headline') < text.index('## Cold start')
    # 1e9 FLOPs an image at 1050 img/s is 1.05 TFLOP/s: 0.1% of the H100's 989, flagged.
    assert 'under 1% of the card\'s peak' in text


def test_a_budget_too_small_skips_parts_with_the_reason_and_ends_in_time(tmp_path):
    run, pages = report(tmp_path, {'row': 1.0}, budget_s=6.0)
    start = time.monotonic()
    assert run.run() == 1
    assert time.monotonic() - start < 6.0 + 1.0
    skipped = [p for p in run.parts if p.status == 'skipped']
    assert skipped and all('needs about' in p.why and 'were left' in p.why for p in skipped)
    assert run.parts[0].status == 'done' and run.parts[1].status == 'done'
    assert 'skipped: needs about' in pages[-1]


def test_a_part_running_at_the_deadline_is_stopped_and_the_page_finished(tmp_path):
    run, pages = report(tmp_path, {'save': 30.0}, budget_s=5.0)
    start = time.monotonic()
    assert run.run() == 1
    assert time.monotonic() - start < 5.0 + 1.0
    save = next(p for p in run.parts if p.kind == 'save')
    assert save.status == 'stopped' and save.why.startswith('at the deadline')
    assert all(p.status == 'not run' for p in run.parts[run.parts.index(save) + 1:])
    assert 'not run: the budget was spent' in pages[-1]
    assert run.worker is None                       # killed


def test_sigterm_half_way_leaves_a_finished_page_that_lists_what_did_not_run(tmp_path):
    run, pages = report(tmp_path, {'row': 0.3})
    timer = threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM))
    before = signal.getsignal(signal.SIGTERM)
    timer.start()
    try:
        assert run.run() == 1
    finally:
        timer.cancel()
    assert signal.getsignal(signal.SIGTERM) is before
    statuses = [p.status for p in run.parts]
    assert 'done' in statuses and statuses.count('stopped') == 1
    assert statuses[statuses.index('stopped') + 1:] == ['not run'] * (
        len(statuses) - statuses.index('stopped') - 1)
    text = pages[-1]
    assert 'stopped by SIGTERM' in text and 'not run: SIGTERM' in text
    with open(run.page) as f:
        assert f.read() == text


def test_a_worker_that_dies_fails_its_part_and_the_next_gets_a_new_one(tmp_path):
    run, pages = report(tmp_path, {}, die='save')
    run.run()
    save = next(p for p in run.parts if p.kind == 'save')
    assert save.status == 'failed' and 'exited with status 3' in save.why
    after = run.parts[run.parts.index(save) + 1]
    assert after.status == 'done'
    assert os.path.exists(str(tmp_path / 'gpu_test.log'))   # the worker's log kept


def test_a_row_without_timed_windows_fails_and_the_page_is_still_written(tmp_path):
    run, pages = report(tmp_path, {}, empty='keras')
    run.run()
    keras = [p for p in run.parts if p.kind == 'keras']
    assert keras and all(p.status == 'failed' and 'no timed window' in p.why for p in keras)
    assert 'failed: no timed window came back' in pages[-1]


def test_a_card_without_fast_bfloat16_runs_its_rows_in_float16(tmp_path):
    device = {'kind': 'GPU', 'compute_capability': [7, 0]}
    assert gpu_report.fast_precision(device) == 'float16'
    assert gpu_report.fast_precision({'kind': 'GPU', 'compute_capability': [6, 0]}) == 'float32'
    assert gpu_report.fast_precision({'kind': 'CPU'}) == 'bfloat16'
    parts = gpu_report.plan(gpu_report.GPU_SIZES, 'float32', 'data', 'folder')
    assert not any(p.args.get('precision') == 'bfloat16' for p in parts)
    rows = [(p.args['depth'], p.args['xla'], p.args['steps_per_call'])
            for p in parts if p.kind == 'row']
    assert len(rows) == len(set(rows))              # no float32 row twice


def test_the_first_row_is_estimated_from_the_cold_start():
    sizes = gpu_report.GPU_SIZES
    device = gpu_report.device_part(sizes, 'f')
    device.status, device.seconds = 'done', 30.0
    device.result = {'xla_steps_s': [20.0, 0.01], 'plain_steps_s': [5.0, 0.02]}
    parts = [device] + gpu_report.plan(sizes, 'bfloat16', 'data', 'f')
    # ResNet-110 has 108/18 = 6 times ResNet-20's units: 6 x (20 s + 180 steps x 0.02 s),
    # and the 30 - 25.03 s the device part spent outside its steps.
    assert gpu_report.estimate(parts[1], parts, 10.0) == pytest.approx(6 * (20 + 3.6) + 4.97)


def test_the_page_never_overwrites_an_earlier_one(tmp_path):
    first = gpu_report.page_path(str(tmp_path), 'nvidia-h200')
    assert first.endswith('gpu_nvidia-h200.md')
    open(first, 'w').close()
    assert gpu_report.page_path(str(tmp_path), 'nvidia-h200').endswith('gpu_nvidia-h200-2.md')


def test_on_a_machine_without_a_gpu_it_refuses_in_one_line():
    status, line = app.call(gpu_report.main, ['gpu_report'], flags.GPU_REPORT)
    assert status == 1
    assert line.startswith('gpu_report: error: TensorFlow sees no GPU here; gpu_report '
                           'measures one')
    assert '--rehearse' in line


def test_outside_a_checkout_the_page_needs_out(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status, line = app.call(gpu_report.main, ['gpu_report', '--rehearse'], flags.GPU_REPORT)
    assert status == 1
    assert 'not a checkout of this repository' in line and '--out' in line
    assert os.listdir(tmp_path) == []


# --- the real rehearsal: the worker on the CPU ----------------------------------------------

def rehearse(tmp_path, budget_minutes, kill_after=None):
    argv = [sys.executable, '-m', 'v2.tools.gpu_report', '--rehearse',
            '--budget_minutes=%s' % budget_minutes, '--out=%s' % tmp_path]
    start = time.monotonic()
    process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    if kill_after:
        time.sleep(kill_after)
        process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60 * budget_minutes + 120)
    return process.returncode, out, err, time.monotonic() - start


@pytest.mark.slow
def test_the_rehearsal_ends_within_its_budget_and_its_page_says_what_ran(tmp_path):
    status, out, err, seconds = rehearse(tmp_path, 0.75)
    assert seconds < 45 + 30, out + err
    page = (tmp_path / 'gpu_rehearsal.md').read_text()
    assert markdown_ok(page)
    assert 'Traceback' not in err
    assert '| ResNet-20 | ' in page                        # the headline row ran
    # What did not fit was skipped by its estimate or, on a busy machine, stopped at the
    # deadline: either way listed, with the reason.
    assert status == 0 or 'skipped: needs about' in page or 'stopped: at the deadline' in page
    assert 'Headline: ResNet-20 at' in page
    assert ('exit', status) == ('exit', 0 if 'complete: every planned part ran' in page else 1)


@pytest.mark.slow
def test_the_rehearsal_stopped_by_sigterm_leaves_its_page_finished(tmp_path):
    status, out, err, seconds = rehearse(tmp_path, 2, kill_after=25)
    assert status == 1, out + err
    page = (tmp_path / 'gpu_rehearsal.md').read_text()
    assert markdown_ok(page)
    assert 'stopped by SIGTERM' in page and 'not run: SIGTERM' in page
    assert seconds < 25 + 15
    assert not workers_alive(), 'a worker outlived the report'


def workers_alive():
    """Process ids of gpu_worker processes on this machine (read from /proc)."""
    alive = []
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            with open('/proc/%s/cmdline' % pid, 'rb') as f:
                if b'v2.tools.gpu_worker' in f.read():
                    alive.append(pid)
        except OSError:
            pass
    return alive
