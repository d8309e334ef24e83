"""One command for the first hour on a GPU: the card, the GPU tests, the numbers, one file.

  python -m v2.tools.gpu_report                 (about 8 minutes on one A100/H100-class card)
  python -m v2.tools.gpu_report --nogpu_tier --depths=20

It prints, and writes as docs/gpu_<device>.md (--out):
  1. the device, its driver and TensorFlow's build (CUDA, cuDNN, compute capabilities);
  2. the GPU tier of the tests (python -m pytest -m gpu), its closing line;
  3. the trainer's images/second (the real pipeline, v2.tools.benchmark's windows) for
     ResNet-20/56/110 x float32 (TF32 on, TensorFlow's default) / bfloat16 x XLA on/off,
     beside a Keras 3 model.fit of the same net at the same precision with Keras's own
     XLA choice (benchmark.time_keras);
  4. how busy the GPU is during the trainer's steps: the time its streams run kernels
     over the time from the first kernel to the last, read from a profiler trace of
     ResNet-20 (bfloat16 where the card has it, XLA) after warm-up;
  5. the cost of one save of ResNet-110's state, and the projected time of the paper's
     64,000-iteration ResNet-110 run at the fastest rate measured, with a save every
     1,000 steps.
It needs nothing from outside the repository: without --data_path it trains on random
images in the CIFAR-10 layout (speed does not depend on the pixels). Rows that do not
fit in --budget_minutes are listed as not run.
"""

import dataclasses
import datetime
import glob
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import tensorflow as tf

from v2.cli import app, flags
from v2.errors import UserError
from v2.nets import model
from v2.runtime import devices
from v2.runtime import precision as precision_lib
from v2.tools import benchmark
from v2.training import loop
from v2.training.recipe import Recipe, RunOptions
from v2.training.state import TrainState

FLAGS = flags.FLAGS
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_ITERATIONS = 64000           # He et al. 2015, section 4.2: 64k iterations at batch 128
PROFILED = (40, 60)                # the steps of the profiler trace: after tracing and warm-up


def busy_share(space) -> float | None:
    """Kernel time over wall time on the first GPU of a profiler XSpace, or None.

    The GPU's stream lines ('Stream #N...') hold one event per kernel or copy; the
    kernels' intervals (copies and memsets left out) are merged, so that kernels that
    overlap on several streams count once, and divided by the time from the first
    kernel's start to the last one's end.
    """
    planes = [p for p in space.planes if p.name.startswith('/device:GPU:')]
    if not planes:
        return None
    plane = sorted(planes, key=lambda p: p.name)[0]
    names = {i: m.name for i, m in plane.event_metadata.items()}
    intervals = []
    for line in plane.lines:
        if not line.name.startswith('Stream'):
            continue
        for event in line.events:
            if re.search('memcpy|memset', names.get(event.metadata_id, ''), re.IGNORECASE):
                continue
            start = line.timestamp_ns * 1000 + event.offset_ps
            intervals.append((start, start + event.duration_ps))
    if not intervals:
        return None
    intervals.sort()
    busy, (current_start, current_end) = 0, intervals[0]
    for start, end in intervals[1:]:
        if start > current_end:
            busy += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    busy += current_end - current_start
    return busy / (max(end for _, end in intervals) - intervals[0][0])


def read_trace(folder):
    """The XSpace of the newest trace under a profiler log folder."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2
    paths = sorted(glob.glob(os.path.join(folder, 'plugins', 'profile', '*', '*.xplane.pb')))
    if not paths:
        return None
    space = xplane_pb2.XSpace()
    with open(paths[-1], 'rb') as f:
        space.ParseFromString(f.read())
    return space


def projected_hours(images_per_second, save_seconds, batch=128, iterations=PAPER_ITERATIONS,
                    save_every=1000):
    """Hours of a run: its steps at this rate, plus one save every save_every steps."""
    return (iterations * batch / images_per_second
            + iterations // save_every * save_seconds) / 3600


@dataclasses.dataclass
class Row:
    depth: int
    precision: str                   # asked for
    xla: bool
    computed: str = ''               # the dtype it ran in (float32 where bf16 is emulated)
    trainer: float | None = None     # median images/second
    keras: float | None = None
    keras_xla: bool | None = None
    note: str = ''


def device_lines(used):
    """The device, its driver and TensorFlow's build, as lines of text."""
    build = tf.sysconfig.get_build_info()
    lines = ['device: %s' % ', '.join(str(d) for d in used)]
    smi = shutil.which('nvidia-smi')
    if smi:
        query = subprocess.run([smi, '--query-gpu=name,driver_version,memory.total',
                                '--format=csv,noheader'], capture_output=True, text=True)
        lines.append('nvidia-smi: %s' % '; '.join(query.stdout.strip().splitlines()))
    lines.append('TensorFlow %s (CUDA %s, cuDNN %s, built for %s), Python %s, %s'
                 % (tf.__version__, build.get('cuda_version'), build.get('cudnn_version'),
                    ' '.join(build.get('cuda_compute_capabilities', [])),
                    platform.python_version(), platform.platform()))
    return lines


def gpu_tier():
    """Runs python -m pytest -m gpu; (its closing line, its exit status)."""
    run = subprocess.run([sys.executable, '-m', 'pytest', '-q', '-m', 'gpu', '-p',
                          'no:cacheprovider', 'tests'], cwd=ROOT, capture_output=True,
                         text=True, timeout=1800)
    lines = [line for line in run.stdout.splitlines() if line.strip()]
    failures = [line for line in lines if line.startswith('FAILED')]
    return (lines[-1] if lines else run.stderr[-500:]), run.returncode, failures


@dataclasses.dataclass
class Bench:
    """What every measurement of the report shares: the devices, the data, a scratch folder,
    the timing windows, and the recipe and run options the flags give."""
    used: list
    data_path: str
    folder: str
    timing: benchmark.Timing
    recipe: Recipe
    options: RunOptions

    def run_options(self, name, **changes):
        return dataclasses.replace(self.options, ckpt_path=os.path.join(self.folder, name),
                                   log_path=os.path.join(self.folder, 'logs'), **changes)


def measure_rows(rows, bench, deadline, keras=True, out=print):
    """Fills each Row in turn with the trainer's and Keras's rates, until the deadline."""
    for row in rows:
        if time.monotonic() > deadline:
            row.note = 'not run: past --budget_minutes'
            continue
        config = model.ModelConfig(num_layers=row.depth)
        recipe = dataclasses.replace(bench.recipe, precision=row.precision)
        row.computed = precision_lib.compute_dtype(row.precision, bench.used,
                                                   warn=lambda line: None).name
        options = bench.run_options('ckpt-%d-%s-%d' % (row.depth, row.precision, row.xla),
                                    jit_compile=row.xla)
        row.trainer = statistics.median(benchmark.time_trainer(config, recipe, options,
                                                               bench.data_path, bench.timing))
        if keras and not row.xla:          # one Keras row per depth and precision
            rates, row.keras_xla = benchmark.time_keras(config, recipe, bench.data_path,
                                                        row.computed, bench.timing)
            row.keras = statistics.median(rates)
        out('ResNet-%d %s XLA %s: %.0f img/s%s' % (
            row.depth, row.computed, 'on' if row.xla else 'off', row.trainer,
            '; Keras fit %.0f img/s' % row.keras if row.keras else ''))


def profile_busy(bench, precision, steps=PROFILED):
    """The busy share of the GPU over steps[0]..steps[1] of a real ResNet-20 run (XLA on)."""
    logdir = os.path.join(bench.folder, 'profile')
    recipe = dataclasses.replace(bench.recipe, precision=precision, num_iterations=steps[1] + 10)
    options = bench.run_options('ckpt-profile', jit_compile=True, log_per_iterations=10,
                                save_every=10 ** 9)

    def on_step(step):
        if step == steps[0]:
            tf.profiler.experimental.start(logdir)
        elif step == steps[1]:
            tf.profiler.experimental.stop()
    loop.train(model.ModelConfig(num_layers=20), recipe, options, bench.data_path,
               out=lambda line: None, on_step=on_step)
    space = read_trace(logdir)
    return busy_share(space) if space is not None else None


def save_seconds(bench, repeats=3):
    """Median seconds of one save of ResNet-110's state (weights, momenta, statistics)."""
    config = model.ModelConfig(num_layers=110)
    state = TrainState.create(config, bench.recipe, tf.distribute.get_strategy(), tf.float32,
                              tf.zeros([32, 32, 3]).numpy())
    manager = tf.train.CheckpointManager(state.checkpoint(bench.recipe),
                                         os.path.join(bench.folder, 'save'), max_to_keep=1)
    manager.save()                                      # the first save builds its graph
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        manager.save()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown(header, tier, rows, busy, save, timing, busy_precision, batch=128,
             profiled=PROFILED):
    """The report as Markdown, with the commands that made it."""
    lines = ['# %s' % header[0].replace('device: ', ''), '',
             'Written by `python -m v2.tools.gpu_report %s` on %s.'
             % (' '.join(sys.argv[1:]), datetime.date.today().isoformat()), '']
    lines += ['- %s' % line for line in header] + ['']
    lines += ['## The GPU tier', '', '`python -m pytest -m gpu`: %s' % tier[0]]
    lines += [''] + ['- %s' % failure for failure in tier[2]]
    lines += ['', '## Training speed', '',
              'Images/second of the trainer on its real input pipeline (median of %d windows '
              'of %d steps after %d warm-up steps, batch %d), and of a Keras 3 `model.fit` of '
              'the same net at the same precision, with uint8 batches augmented by Keras '
              'layers inside the model and Keras\'s own XLA choice (`jit_compile=\'auto\'`). '
              'float32 runs with TF32, TensorFlow\'s default.'
              % (timing.windows, timing.steps, timing.warmup_windows * timing.steps, batch), '',
              '| network | precision | XLA | trainer img/s | Keras fit img/s | trainer / Keras |',
              '|---|---|---|---:|---:|---:|']
    keras = {(r.depth, r.computed): r for r in rows if r.keras}
    for r in rows:
        if r.trainer is None:
            lines.append('| ResNet-%d | %s | %s | %s | | |' % (r.depth, r.precision,
                                                               'on' if r.xla else 'off', r.note))
            continue
        k = keras.get((r.depth, r.computed))
        lines.append('| ResNet-%d | %s | %s | %.0f | %s | %s |' % (
            r.depth, r.computed, 'on' if r.xla else 'off', r.trainer,
            '%.0f%s' % (k.keras, ' (XLA)' if k.keras_xla else '') if k else '',
            '%.2fx' % (r.trainer / k.keras) if k else ''))
    lines += ['', '## The GPU during a step', '']
    lines.append('Busy share (kernel time over wall time, from a profiler trace of steps %d-%d '
                 'of ResNet-20, %s, XLA on): %s'
                 % (*profiled, busy_precision, '%.0f%%' % (100 * busy) if busy is not None
                    else 'not measured'))
    best = max((r for r in rows if r.depth == 110 and r.trainer), key=lambda r: r.trainer,
               default=None)
    lines += ['', 'One save of ResNet-110\'s state: %.2f s.' % save]
    if best:
        lines.append('Projected time of the paper\'s 64,000-iteration ResNet-110 run at %.0f '
                     'img/s (%s, XLA %s), with a save every 1,000 steps: %.1f hours.'
                     % (best.trainer, best.computed, 'on' if best.xla else 'off',
                        projected_hours(best.trainer, save, batch)))
    return '\n'.join(lines) + '\n'


def main(argv):
    del argv
    used = devices.setup('default', tuple(FLAGS.devices), FLAGS.tf32)
    if not any(d.kind == 'GPU' for d in used):
        raise UserError('TensorFlow sees no GPU here; gpu_report measures one (%s)'
                        % devices.GPU_INSTALL)
    started = time.monotonic()
    deadline = started + 60 * FLAGS.budget_minutes
    header = device_lines(used)
    for line in header:
        print(line, flush=True)
    tier = ('not run (--nogpu_tier)', 0, [])
    if FLAGS.gpu_tier:
        tier = gpu_tier()
        print('GPU tier: %s' % tier[0], flush=True)
    timing = benchmark.Timing(-(-FLAGS.warmup_steps // FLAGS.window_steps), FLAGS.windows,
                              FLAGS.window_steps)
    depths = FLAGS.depths if FLAGS['depths'].present else ['20', '56', '110']
    rows = [Row(int(depth), precision, xla) for depth in depths
            for precision in ('bfloat16', 'float32') for xla in (True, False)]
    busy_precision = precision_lib.compute_dtype('bfloat16', used, warn=lambda line: None).name
    recipe = flags.recipe()
    with tempfile.TemporaryDirectory() as folder:
        data_path = FLAGS.data_path
        if not data_path:
            data_path = os.path.join(folder, 'data')
            os.makedirs(data_path)
            benchmark.write_random_cifar10(data_path)
        bench = Bench(used, data_path, folder, timing, recipe,
                      flags.run_options(model.ModelConfig(num_layers=20)))
        measure_rows(rows, bench, deadline, FLAGS.keras)
        busy = profile_busy(bench, busy_precision)
        print('GPU busy during ResNet-20 steps: %s'
              % ('%.0f%%' % (100 * busy) if busy is not None else 'not measured'))
        save = save_seconds(bench)
    text = markdown(header, tier, rows, busy, save, timing, busy_precision, recipe.batch_size)
    slug = re.sub(r'[^a-z0-9]+', '-', used[0].description.lower()).strip('-')
    folder = FLAGS.out if FLAGS['out'].present else os.path.join(ROOT, 'docs')
    path = os.path.join(folder, 'gpu_%s.md' % slug)
    os.makedirs(folder, exist_ok=True)
    with open(path, 'w') as f:
        f.write(text)
    print(text)
    print('wrote %s in %.1f minutes' % (path, (time.monotonic() - started) / 60))
    return 0 if tier[1] in (0, 5) else 1


def run():
    """The console entry point and python -m."""
    app.run(main, flags.GPU_REPORT)


if __name__ == '__main__':
    run()
