"""One command for a short GPU window: the card, the numbers that matter most, one page.

  python -m v2.tools.gpu_report                       (10 minutes: --budget_minutes)
  python -m v2.tools.gpu_report --rehearse --budget_minutes=2     (the same plan on the CPU)

It runs a fixed plan, most valuable first, under a hard deadline:
  1. the device, its driver, TensorFlow's build and the cold start (the first op; the
     first and second steps with XLA off and on);
  2. ResNet-110 in the card's fast precision (bfloat16 from compute capability 8.0) with
     XLA, one save of its state, and so the projected time of the paper's 64k-iteration run;
  3. ResNet-20 with XLA on and off and with 10 steps a call, the first and the last under
     the profiler (how busy the GPU is at that cadence); ResNet-56; ResNet-110 without XLA;
  4. a Keras 3 `model.fit` of each net beside ours; then float32 (TF32);
  5. the GPU tier of the tests (python -m pytest -m gpu), its slowest tests skipped when
     the time left is short.
Each part runs in a worker process (v2.tools.gpu_worker) that is killed when the deadline
comes; before a part starts its cost is estimated from what was already measured, and a
part that cannot finish is skipped with the reason. The page is written after every part
(and on SIGTERM, SIGINT, an error or the deadline) with what was measured and why the rest
was not; the exit status is 0 only when every planned part ran and the GPU tier passed.

The page goes to --out, by default docs/ of the working directory when it is a checkout of
this repository (an earlier page of the same card is kept: the new one gets a number).
Without --data_path the nets train on random images in the CIFAR-10 layout (speed does
not depend on the pixels). --rehearse runs the same plan, deadline, page and signal code
on the CPU at toy sizes; only the device differs.
"""

import dataclasses
import datetime
import json
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from v2.cli import app
from v2.errors import UserError
from v2.runtime import devices
from v2.tools import flags, gpu_page

FLAGS = flags.FLAGS
FINISH_S = 3.0                     # kept back from the deadline to finish the page
PRIOR_SAVE_S = 5.0                 # a save's cost before one is measured
GPU_TIER_PROCESSES = (18, 10)      # programs tests/test_gpu.py starts: all, and its short run


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the plan trains: three depths standing for 20, 56 and 110, a batch, the timing
    windows (warm-up windows, timed windows, steps a window), the steps a call of the
    multi-step row and the random data set's records (training, test)."""
    depths: tuple
    batch: int
    timing: tuple
    steps_per_call: int
    records: tuple


GPU_SIZES = Sizes((20, 56, 110), 128, (1, 5, 30), 10, (50000, 10000))
REHEARSAL_SIZES = Sizes((8, 14, 20), 16, (1, 2, 3), 3, (640, 128))


@dataclasses.dataclass
class Part:
    """One planned measurement: what the worker runs, and what came of it."""
    kind: str                      # device, row, keras, save or gpu_tier
    title: str
    args: dict
    status: str = 'waiting'        # waiting, running, done, failed, skipped, stopped, not run
    why: str = ''
    result: dict | None = None
    seconds: float | None = None
    smi: dict | None = None


def fast_precision(device: dict) -> str:
    """The precision a row runs fastest in: bfloat16 on CPUs and from compute capability
    8.0, float16 from 7.0 (tensor cores), float32 before."""
    capability = tuple(device.get('compute_capability') or ())
    if device.get('kind') != 'GPU' or capability >= (8, 0):
        return 'bfloat16'
    return 'float16' if capability >= (7, 0) else 'float32'


def device_part(sizes: Sizes, folder: str) -> Part:
    return Part('device', 'the device and its cold start',
                dict(depth=sizes.depths[0], batch=sizes.batch, precision='bfloat16',
                     folder=folder))


def plan(sizes: Sizes, fast: str, data_path: str, folder: str) -> list[Part]:
    """The parts after the device, most valuable first."""
    d20, d56, d110 = sizes.depths
    timing = dict(timing=list(sizes.timing), batch=sizes.batch, data_path=data_path)

    def row(depth, precision, xla, steps_per_call=1, profile=False):
        title = 'ResNet-%d %s, XLA %s%s%s' % (
            depth, precision, 'on' if xla else 'off',
            ', %d steps a call' % steps_per_call if steps_per_call > 1 else '',
            ', profiled' if profile else '')
        return Part('row', title, dict(depth=depth, precision=precision, xla=xla,
                                       steps_per_call=steps_per_call, profile=profile,
                                       folder=folder, **timing))

    def keras(depth, precision):
        return Part('keras', 'Keras fit, ResNet-%d %s' % (depth, precision),
                    dict(depth=depth, precision=precision, **timing))
    parts = [row(d110, fast, True),
             Part('save', 'one save of ResNet-%d\'s state' % d110,
                  dict(depth=d110, batch=sizes.batch, folder=folder)),
             row(d20, fast, True, profile=True), row(d20, fast, False),
             row(d20, fast, True, sizes.steps_per_call, profile=True),
             row(d56, fast, True), row(d56, fast, False), row(d110, fast, False),
             keras(d20, fast), keras(d56, fast), keras(d110, fast)]
    if fast != 'float32':
        parts += [row(d, 'float32', xla) for d in (d20, d56, d110) for xla in (True, False)]
        parts.append(keras(d20, 'float32'))
    parts.append(Part('gpu_tier', 'the GPU tier (python -m pytest -m gpu)', {}))
    return parts


def _units(depth):
    return max(depth - 2, 1)        # residual units (and so compile and step time) grow so


def estimate(part: Part, parts: list[Part], worker_start_s: float) -> float:
    """Seconds `part` will take, from what the parts before it measured (conservative)."""
    done = [p for p in parts if p.status == 'done']
    device = next((p for p in done if p.kind == 'device'), None)
    if part.kind == 'device':
        return 0.0                 # always run: nothing is known before it
    if part.kind == 'save':
        rows = [p for p in done if p.kind == 'row']
        return min([PRIOR_SAVE_S] + [p.seconds for p in rows])
    if part.kind == 'gpu_tier':
        per_program = worker_start_s + (device.result['plain_steps_s'][0] if device else 10)
        return per_program * GPU_TIER_PROCESSES[1]
    depth = part.args['depth']
    like = [p for p in done if p.kind == part.kind]
    if part.kind == 'row':         # XLA's compile makes XLA rows cost more than the others
        like = [p for p in like if p.args['xla'] == part.args['xla']] or like
    factor = 1.0
    if not like and part.kind == 'keras':
        like, factor = [p for p in done if p.kind == 'row'], 2.0
    if like:
        return factor * max(p.seconds * _units(depth) / _units(p.args['depth']) for p in like)
    if not device:
        return float('inf')
    r, ratio = device.result, _units(depth) / _units(device.args['depth'])
    steps = (part.args['timing'][0] + part.args['timing'][1]) * part.args['timing'][2]
    compile_s = max(r['xla_steps_s'][0], r['plain_steps_s'][0])
    # What the device part spent besides its four steps (building the net and its state)
    # stands for a row's own set-up.
    overhead = max(device.seconds - sum(r['xla_steps_s'] + r['plain_steps_s']), 0)
    return factor * ratio * (compile_s + steps * max(r['xla_steps_s'][1],
                                                      r['plain_steps_s'][1])) + overhead


class Stopped(Exception):
    """SIGTERM or SIGINT arrived while the report ran."""

    def __init__(self, signum):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Deadline(Exception):
    """The budget ran out while a part was running."""


class WorkerDied(Exception):
    """The worker process ended without answering (killed for memory, a crash)."""


class Worker:
    """A gpu_worker process: JSON requests in, one JSON answer a line out."""

    def __init__(self, argv, env, log_path):
        self.log = open(log_path, 'a')
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True, env=env,
                                        start_new_session=True)
        self.answers = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.log_path = log_path

    def _read(self):
        for line in self.process.stdout:
            self.answers.put(line)
        self.answers.put(None)

    def receive(self, deadline, clock=time.monotonic):
        """The next answer; Deadline when the clock passes `deadline` first."""
        while True:
            left = deadline - clock()
            if left <= 0:
                raise Deadline()
            try:
                line = self.answers.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                self.process.wait()
                raise WorkerDied('the worker exited with status %s (%s)'
                                 % (self.process.returncode, self.last_log_line()))
            return json.loads(line)

    def ask(self, kind, args, deadline):
        self.process.stdin.write(json.dumps({'kind': kind, 'args': args}) + '\n')
        self.process.stdin.flush()
        return self.receive(deadline)

    def last_log_line(self):
        self.log.flush()
        with open(self.log_path) as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1][:300] if lines else 'nothing in its log'

    def kill(self):
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.log.close()


class Sampler:
    """nvidia-smi's utilisation and memory of the card, sampled while a part runs."""

    def __init__(self, command):
        self.command = command
        self.process = None
        self.samples = []

    def start(self):
        self.samples = []          # a list of this part's own: a late line of the last
        if not self.command:       # part's reader goes to that part's list
            return
        self.process = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._read, args=(self.process, self.samples),
                         daemon=True).start()

    @staticmethod
    def _read(process, samples):
        for line in process.stdout:
            numbers = [float(v) for v in re.findall(r'\d+(?:\.\d+)?', line)]
            if len(numbers) >= 2 and '[N/A]' not in line:
                samples.append(numbers[:2])

    def stop(self):
        """{util_mean, util_max, memory_max} of the samples, or None without any."""
        if self.process:
            self.process.terminate()
            self.process.wait()
            self.process = None
        if not self.samples:
            return None
        util = [s[0] for s in self.samples]
        return {'util_mean': sum(util) / len(util), 'util_max': max(util),
                'memory_max': max(s[1] for s in self.samples)}


def smi_command(index=0):
    smi = shutil.which('nvidia-smi')
    return [smi, '--query-gpu=utilization.gpu,memory.used', '--format=csv,noheader,nounits',
            '--id=%d' % index, '-lms', '200'] if smi else None


@dataclasses.dataclass
class Report:
    """A run of the plan: the parts, the page and the deadline, and how to start workers."""
    parts: list
    page: str
    deadline: float
    budget_s: float
    title: str
    header: list
    command: str
    rehearsal: bool
    worker_argv: list
    worker_env: dict
    log_path: str
    sizes: Sizes
    data_path: str
    folder: str
    checkout: str | None
    timing_note: str
    sampler: Sampler
    build: dict = dataclasses.field(default_factory=dict)   # tf.sysconfig.get_build_info()
    driver: str | None = None                                # nvidia-smi's driver version
    prepare: object = None           # run first, under the signal handlers (the random data)
    started: float = dataclasses.field(default_factory=time.monotonic)
    worker: Worker | None = None
    part_started: float = 0.0
    worker_start_s: float | None = None
    stopped_by: str = ''
    date: str = dataclasses.field(default_factory=lambda: datetime.date.today().isoformat())
    out: object = print

    def progress(self):
        elapsed = time.monotonic() - self.started
        done = sum(p.status == 'done' for p in self.parts)
        state = ('complete: every planned part ran' if done == len(self.parts) else
                 'in progress (this page is written after every part)'
                 if any(p.status in ('waiting', 'running') for p in self.parts) else
                 'incomplete: %d of %d parts ran%s' % (
                     done, len(self.parts), ', stopped by %s' % self.stopped_by
                     if self.stopped_by else ''))
        return '%s; %.0f s of a %g-minute budget' % (state, elapsed, self.budget_s / 60)

    def write(self):
        """The page as it stands, replaced in one rename so that it is always whole."""
        text = gpu_page.markdown(self)
        partial = self.page + '.partial'
        with open(partial, 'w') as f:
            f.write(text)
        os.replace(partial, self.page)
        return text

    def left(self):
        return self.deadline - time.monotonic() - FINISH_S

    def _worker(self):
        if self.worker is None or self.worker.process.poll() is not None:
            start = time.monotonic()
            self.worker = Worker(self.worker_argv, self.worker_env, self.log_path)
            hello = self.worker.receive(self.deadline - FINISH_S)
            self.worker_start_s = time.monotonic() - start
            self.out('worker ready in %.1f s on %s' % (self.worker_start_s,
                                                       ', '.join(hello['devices'])))
        return self.worker

    def _stop_worker(self):
        if self.worker is not None:
            self.worker.kill()
            self.worker = None

    def run_part(self, part):
        """Runs one part through the worker (the GPU tier as its own process)."""
        if part.kind == 'gpu_tier':
            self._stop_worker()    # the card's memory back for the tier's programs
            part.result = self.gpu_tier(part)
            return
        worker = self._worker()
        answer = worker.ask(part.kind, part.args, self.deadline - FINISH_S)
        if 'error' in answer:
            raise PartFailed(answer['error'])
        if 'rates' in answer and not answer['rates']:
            raise PartFailed('no timed window came back')
        part.result = answer

    def gpu_tier(self, part):
        if not self.checkout:
            raise PartFailed('not available: the working directory is not a checkout of this '
                             'repository, whose tests/ the tier runs')
        full = GPU_TIER_PROCESSES[0] / GPU_TIER_PROCESSES[1] * estimate(part, self.parts,
                                                                       self.worker_start_s or 10)
        short = full > self.left()
        env = dict(self.worker_env, CIFAR_GPU_TIER_SHORT='1' if short else '')
        tier = subprocess.Popen([sys.executable, '-m', 'pytest', '-q', '-rfs', '-m', 'gpu', '-p',
                                 'no:cacheprovider', 'tests'], cwd=self.checkout, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = tier.communicate(timeout=max(self.left(), 1))
        except subprocess.TimeoutExpired:
            raise Deadline() from None
        finally:                  # the programs the tests started go with it, at any end
            try:
                os.killpg(tier.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            tier.wait()
        lines = [line for line in stdout.splitlines() if line.strip()]
        result = {'closing': lines[-1] if lines else stderr[-300:],
                  'failures': [line for line in lines if line.startswith('FAILED')],
                  'short': ('about %.0f s needed, %.0f s left' % (full, self.left() + 0))
                  if short else '', 'returncode': tier.returncode}
        if tier.returncode not in (0, 5):
            part.result = result
            raise PartFailed('the tier failed: %s' % result['closing'])
        return result

    def replan(self, device):
        fast = fast_precision(device.result)
        if fast != 'bfloat16':
            self.out('%s has no fast bfloat16: the rows run in %s' % (device.result['name'],
                                                                       fast))
            self.parts[1:] = plan(self.sizes, fast, self.data_path, self.folder)
        self.header.extend(gpu_page.compile_warnings(
            device.result.get('compute_capability'), self.build.get('cuda_compute_capabilities'),
            self.build.get('cuda_version'), self.driver))

    def run(self):
        """Every part in turn, under the deadline and the signals; the exit status."""
        def stop(signum, frame):
            raise Stopped(signum)
        previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
        index = 0
        try:
            self.write()
            if self.prepare:
                self.prepare()
            while index < len(self.parts):
                part = self.parts[index]
                index += 1
                needed = estimate(part, self.parts, self.worker_start_s or 0)
                if needed > self.left():
                    part.status, part.why = 'skipped', (
                        'needs about %.0f s by what was measured; %.0f s were left'
                        % (needed, max(self.left(), 0)))
                    self.out('%s: %s' % (part.title, part.why))
                    self.write()
                    continue
                part.status = 'running'
                self.write()
                self.sampler.start()
                start = self.part_started = time.monotonic()
                try:
                    self.run_part(part)
                    part.status = 'done'
                except PartFailed as e:
                    part.status, part.why = 'failed', str(e)
                except WorkerDied as e:
                    part.status, part.why = 'failed', str(e)
                    self._stop_worker()
                finally:
                    part.seconds = time.monotonic() - start
                    part.smi = self.sampler.stop()
                self.out('%s: %s' % (part.title, gpu_page.status_line(part)))
                if part.kind == 'device' and part.status == 'done':
                    self.replan(part)
                elif part.kind == 'device':
                    self._finish('stopped', '', 'the device part failed')
                self.write()
        except Deadline:
            self._finish('stopped', 'at the deadline', 'the budget was spent')
        except Stopped as e:
            self.stopped_by = str(e)
            self._finish('stopped', 'by %s' % e, str(e))
        except BaseException as e:
            self._finish('stopped', 'the report failed: %s' % e, 'the report failed')
            raise
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
            self._stop_worker()
            self.sampler.stop()
            self.write()
            self.keep_log()
        return 0 if all(p.status == 'done' for p in self.parts) else 1

    def _finish(self, status, why_running, why_waiting):
        for part in self.parts:
            if part.status == 'running':
                part.status, part.why = status, '%s after %.0f s' % (
                    why_running, time.monotonic() - self.part_started)
            elif part.status == 'waiting':
                part.status, part.why = 'not run', why_waiting
        self.out('report: %s' % (why_running or why_waiting))

    def keep_log(self):
        """The worker's log beside the page when a part failed, so its traceback is kept."""
        if any(p.status == 'failed' for p in self.parts) and os.path.exists(self.log_path):
            shutil.copyfile(self.log_path, self.page[:-len('.md')] + '.log')


class PartFailed(Exception):
    """A part that ran and failed (its error in one line); the report goes on."""


def checkout_root(folder: str) -> str | None:
    """`folder` if it is a checkout of this repository (its tests and this tool), else None."""
    needed = ('README.md', 'tests/test_gpu.py', 'v2/tools/gpu_report.py')
    return folder if all(os.path.exists(os.path.join(folder, p)) for p in needed) else None


def page_path(folder: str, slug: str) -> str:
    """<folder>/gpu_<slug>.md, or gpu_<slug>-N.md with the first free N: an earlier page of
    the same card (perhaps the only one there will be) is never overwritten."""
    path, n = os.path.join(folder, 'gpu_%s.md' % slug), 2
    while os.path.exists(path):
        path, n = os.path.join(folder, 'gpu_%s-%d.md' % (slug, n)), n + 1
    return path


def machine_lines(build, rehearsal):
    """The machine's lines of the page: the card and driver, TensorFlow's build, Python."""
    lines = []
    smi = shutil.which('nvidia-smi')
    driver = None
    if smi and not rehearsal:
        query = subprocess.run([smi, '--query-gpu=name,driver_version,memory.total',
                                '--format=csv,noheader'], capture_output=True, text=True)
        cards = query.stdout.strip().splitlines()
        lines.append('nvidia-smi: %s' % ('; '.join(cards) or query.stderr.strip()[:200]))
        if cards and len(cards[0].split(',')) >= 2:
            driver = cards[0].split(',')[1].strip()
    lines.append('TensorFlow %s (CUDA %s, cuDNN %s, built for %s), Python %s, %s' % (
        build.get('version'), build.get('cuda_version'), build.get('cudnn_version'),
        ' '.join(build.get('cuda_compute_capabilities', [])), platform.python_version(),
        platform.platform()))
    return lines, driver


def main(argv):
    del argv
    import tensorflow as tf
    rehearsal = FLAGS.rehearse
    checkout = checkout_root(os.getcwd())
    if FLAGS['out'].present:
        out_folder = FLAGS.out
    elif checkout:
        out_folder = os.path.join(checkout, 'docs')
    else:
        raise UserError('the working directory is not a checkout of this repository; say '
                        'where the page goes with --out=FOLDER', settings=('out',))
    if not os.path.isdir(out_folder):
        raise UserError('out=%s: no such folder' % out_folder, settings=('out',))
    devices.keep_compiled_kernels()                 # before CUDA starts, here and in workers
    gpus = tf.config.list_physical_devices('GPU')
    if not gpus and not rehearsal:
        raise UserError('TensorFlow sees no GPU here; gpu_report measures one (%s); '
                        '--rehearse runs its plan on the CPU' % devices.GPU_INSTALL)
    build = dict(tf.sysconfig.get_build_info(), version=tf.__version__)
    index = next((i for kind, i in map(devices.parse, FLAGS.devices) if kind == 'GPU'), 0)
    sizes = REHEARSAL_SIZES if rehearsal else GPU_SIZES
    timing = list(sizes.timing)
    if FLAGS['window_steps'].present or not rehearsal:
        timing[2] = FLAGS.window_steps
    if FLAGS['windows'].present or not rehearsal:
        timing[1] = FLAGS.windows
    if FLAGS['warmup_steps'].present or not rehearsal:
        timing[0] = -(-FLAGS.warmup_steps // timing[2])
    sizes = dataclasses.replace(sizes, timing=tuple(timing))
    header, driver = machine_lines(build, rehearsal)
    if rehearsal:
        header.insert(0, 'rehearsal on the CPU: %s' % devices.cpu_info()[0])
        name, slug = 'Rehearsal of the GPU report on the CPU', 'rehearsal'
    else:
        details = tf.config.experimental.get_device_details(gpus[min(index, len(gpus) - 1)])
        name = details.get('device_name') or 'GPU'
        slug = re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-')
        name = 'GPU report: %s' % name
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))]
        + [p for p in [env.get('PYTHONPATH')] if p])
    if rehearsal:
        env['CUDA_VISIBLE_DEVICES'] = '-1'
    page = page_path(out_folder, slug)
    budget_s = 60 * FLAGS.budget_minutes
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as folder:
        data_path = FLAGS.data_path or os.path.join(folder, 'data')

        def random_data():         # run by the report, under its signal handlers
            from v2.tools import benchmark
            os.makedirs(data_path)
            benchmark.write_random_cifar10(data_path, *sizes.records)
        report = Report(
            parts=[device_part(sizes, folder)] + plan(sizes, 'bfloat16', data_path, folder),
            page=page, deadline=started + budget_s, budget_s=budget_s, title=name,
            header=header, command='python -m v2.tools.gpu_report %s' % ' '.join(sys.argv[1:]),
            rehearsal=rehearsal,
            worker_argv=[sys.executable, '-m', 'v2.tools.gpu_worker',
                         json.dumps({'devices': list(FLAGS.devices), 'tf32': FLAGS.tf32})],
            worker_env=env, log_path=os.path.join(folder, 'worker.log'), sizes=sizes,
            data_path=data_path, folder=folder, checkout=checkout,
            sampler=Sampler(None if rehearsal else smi_command(index)),
            timing_note='Images/second of the trainer on its real input pipeline and loop '
                        '(median of %d windows of %d steps after %d warm-up steps, batch %d, '
                        'one host read a window).' % (sizes.timing[1], sizes.timing[2],
                                                       sizes.timing[0] * sizes.timing[2],
                                                       sizes.batch),
            build=build, driver=driver, started=started,
            prepare=None if FLAGS.data_path else random_data,
            out=lambda line: print(line, flush=True))
        print('%s: writing %s as it goes (budget %.1f minutes)' % (name, page,
                                                                 FLAGS.budget_minutes),
              flush=True)
        status = report.run()
    print('wrote %s in %.1f minutes: %s' % (page, (time.monotonic() - started) / 60,
                                            report.progress()))
    return status


def run():
    """The console entry point and python -m."""
    app.run(main, flags.GPU_REPORT)


if __name__ == '__main__':
    run()
