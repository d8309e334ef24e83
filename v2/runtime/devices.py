"""The devices a run uses, set up before TensorFlow starts: GPUs, their memory, TF32.

On a machine with GPUs, TensorFlow by default reserves nearly all the memory of
every GPU it can see. Here every GPU gets memory growth (it takes what it needs,
so an evaluator can run beside a trainer on the same card), and a one-device run
sees one GPU: the first, or the one --devices names. TF32 (on by default on
Ampere and later GPUs: float32 matrix work with a 10-bit mantissa) can be turned
off for comparisons that need IEEE float32.

Which precision and whether XLA pays also depend on the device, so they are
decided here, from a Device record that a test can make up.
"""

import contextlib
import dataclasses
import os
import re
import shutil
import sys
from collections.abc import Callable, Sequence

import tensorflow as tf

from v2.errors import UserError


@dataclasses.dataclass(frozen=True)
class Device:
    """One device a run computes on."""
    kind: str                                           # 'GPU' or 'CPU'
    description: str                                    # 'NVIDIA H100 80GB HBM3', CPU model
    compute_capability: tuple[int, int] | None = None
    has_bf16: bool = False                              # CPUs: bfloat16 units
    has_amx: bool = False                               # CPUs: AMX matrix units

    def __str__(self):
        if self.kind == 'GPU':
            return '%s (compute capability %s)' % (
                self.description, '.'.join(map(str, self.compute_capability or ('?',))))
        return 'CPU %s%s' % (self.description, ', bfloat16 units' if self.has_bf16 else '')


def cpu_info() -> tuple[str, bool, bool]:
    """(model name, has bfloat16 units: AVX512-BF16 or AMX-BF16, has AMX's bfloat16 tiles),
    read from Linux."""
    try:
        with open('/proc/cpuinfo') as f:
            text = f.read()
    except OSError:
        return 'unknown', False, False
    names = [line.split(':', 1)[1].strip() for line in text.splitlines()
             if line.startswith('model name')]
    return ((names[0] if names else 'unknown'), 'avx512_bf16' in text or 'amx_bf16' in text,
            'amx_bf16' in text)


# Every spelling of one local device that TensorFlow prints or users write: '/gpu:1', 'GPU:1',
# '/device:GPU:1', '/physical_device:GPU:1', '/job:localhost/replica:0/task:0/device:GPU:1'.
_DEVICE = re.compile(r'(?:/job:[\w-]+)?(?:/replica:\d+)?(?:/task:\d+)?/?'
                     r'(?:device:|physical_device:)?(gpu|cpu):(\d+)', re.IGNORECASE)


def parse(name: str) -> tuple[str, int]:
    """('GPU', 1) for any spelling of GPU 1 (see _DEVICE); a UserError for anything else.

    'cuda:0' or 'gpu1' would otherwise read as "a device that is not a GPU" and hide
    every GPU: a run meant for a GPU would train on the CPU without a word.
    """
    match = _DEVICE.fullmatch(name.strip())
    if not match:
        raise UserError('devices=%s: not a device name; write /gpu:N or /cpu:0 (GPU:N, '
                        '/device:GPU:N and TensorFlow\'s full names also work)' % name,
                        settings=('devices',))
    return match.group(1).upper(), int(match.group(2))


def canonical(name: str) -> str:
    """'/gpu:1' for any spelling of GPU 1, '/cpu:0' for the CPU's."""
    kind, index = parse(name)
    return '/%s:%d' % (kind.lower(), index)


def _gpu_indices(names: Sequence[str]) -> list[int]:
    return [index for kind, index in map(parse, names) if kind == 'GPU']


def nvidia_driver() -> str | None:
    """Where this machine shows an NVIDIA driver (its /proc entry or nvidia-smi), or None."""
    if os.path.exists('/proc/driver/nvidia/version'):
        return '/proc/driver/nvidia/version'
    return shutil.which('nvidia-smi')


GPU_INSTALL = 'pip install -r requirements-gpu.txt (TensorFlow with its CUDA libraries)'
# The largest CUDA allows for its cache of kernels compiled from PTX: on a card the wheel has
# no machine code for (H100, H200) the driver compiles TensorFlow's kernels at first use, and
# the cache keeps them for the next run only if they fit.
CUDA_CACHE_BYTES = str(4 << 30)


def keep_compiled_kernels():
    """CUDA_CACHE_MAXSIZE at its largest unless it is set; it is read when CUDA starts."""
    os.environ.setdefault('CUDA_CACHE_MAXSIZE', CUDA_CACHE_BYTES)


def check_gpus_seen(physical, devices: Sequence[str], out: Callable):
    """Says so, before any data is read, when a driver is here but TensorFlow sees no GPU.

    The plain `tensorflow` wheel finds no CUDA libraries and falls back to the CPU; the
    only sign would be the word CPU in the run's first line. A run that names a GPU is
    refused instead of trained on the CPU. GPUs hidden on purpose (CUDA_VISIBLE_DEVICES
    empty or -1, as the test tiers do) are not warned about.
    """
    if physical:
        return
    driver = nvidia_driver()
    hidden = os.environ.get('CUDA_VISIBLE_DEVICES') in ('', '-1')     # hidden on purpose
    named = _gpu_indices(devices)
    if named:
        why = (' (CUDA_VISIBLE_DEVICES=%s hides them)' % os.environ['CUDA_VISIBLE_DEVICES']
               if hidden else ' though an NVIDIA driver is (%s); %s' % (driver, GPU_INSTALL)
               if driver else ' on this machine')
        raise UserError('devices=%s: no device /gpu:%d here: TensorFlow sees no GPU%s'
                        % (','.join(devices), named[0], why), settings=('devices',))
    if driver and not devices and not hidden:
        out('warning: an NVIDIA driver is here (%s) but TensorFlow sees no GPU, so this runs '
            'on the CPU; %s' % (driver, GPU_INSTALL))


def setup(strategy: str, *, devices: Sequence[str] = (), tf32: bool = True,
          out: Callable = print, cpu_devices: int = 0) -> list[Device]:
    """Sets up the GPUs for a run (before any other TensorFlow work); returns those it uses.

    default: one device, the GPU --devices names or GPU 0 (the CPU without GPUs);
    mirrored: the GPUs --devices names, or all; multi_worker: all of this machine's.
    A run that names only CPUs (or splits the CPU) sees no GPU at all.
    """
    keep_compiled_kernels()
    physical = tf.config.list_physical_devices('GPU')
    check_gpus_seen(physical, devices, out)
    wanted = _gpu_indices(devices)
    if strategy == 'default' and len(devices) > 1:
        raise UserError('devices=%s: one device without distribution_strategy=mirrored'
                        % ','.join(devices), settings=('devices', 'distribution_strategy'))
    if physical and (cpu_devices > 1 or (devices and not wanted)):
        try:
            tf.config.set_visible_devices([], 'GPU')
        except RuntimeError:
            out("note: TensorFlow's devices were set up before this run; using them as they are")
            return describe(physical)
        return describe([])
    for i in wanted:
        if i >= len(physical):
            raise _no_such_gpu(devices, i, physical)
    used = [physical[i] for i in wanted] if wanted else physical
    if strategy == 'default':
        used = used[:1]
    _show_only(physical, used, grow=physical, out=out)
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    return describe(used)


def _no_such_gpu(devices, index, physical):
    return UserError('devices=%s: no device /gpu:%d here; this machine has %d GPU%s'
                     % (','.join(devices), index, len(physical),
                        '' if len(physical) == 1 else 's'), settings=('devices',))


def _show_only(physical, used, grow, out=None):
    """Memory growth on the GPUs `grow`, and only `used` visible to TensorFlow. Where
    TensorFlow had already started in this process (tests, notebooks) nothing can change:
    `out`, if given, says so."""
    try:
        for gpu in grow:
            tf.config.experimental.set_memory_growth(gpu, True)
        if physical:
            tf.config.set_visible_devices(used, 'GPU')
    except RuntimeError:
        if physical and out:
            out("note: TensorFlow's devices were set up before this run; using them as they are")


def setup_for_evaluation(devices: Sequence[str] = (), out: Callable = print) -> list[Device]:
    """One GPU for an evaluation (the first, or the one `devices` names), with memory growth,
    so that an evaluator fits beside a running trainer; the CPU when `devices` names it."""
    if len(devices) > 1:
        raise UserError('devices=%s: the evaluator uses one device' % ','.join(devices),
                        settings=('devices',))
    keep_compiled_kernels()
    physical = tf.config.list_physical_devices('GPU')
    check_gpus_seen(physical, devices, out)
    wanted = _gpu_indices(devices)
    if devices and not wanted:
        used = []
    else:
        index = wanted[0] if wanted else 0
        if physical and index >= len(physical):
            raise _no_such_gpu(devices, index, physical)
        used = physical[index:index + 1]
    _show_only(physical, used, grow=used)
    return describe(used)


def describe(gpus) -> list[Device]:
    """Device records of these physical GPUs, or of the CPU when there are none."""
    if not gpus:
        name, bf16, amx = cpu_info()
        return [Device('CPU', name, has_bf16=bf16, has_amx=amx)]
    records = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        records.append(Device('GPU', details.get('device_name') or getattr(gpu, 'name', 'GPU'),
                              details.get('compute_capability')))
    return records


def on_gpu(used: Sequence[Device]) -> bool:
    """Whether any of these devices is a GPU."""
    return any(d.kind == 'GPU' for d in used)


def layout_optimizer_by_default(used: Sequence[Device]) -> bool:
    """Grappler's layout optimizer: off on CPUs with AMX, on everywhere else.

    On a GPU it gives cuDNN the layouts its fastest convolutions want. On a CPU with
    AMX it only adds transposes around oneDNN's convolutions, and the step is faster
    without it; on the other CPUs measured, the difference was inside the machines'
    noise, so TensorFlow's default stays (docs/performance.md). The weights are the same
    either way (tests/test_train.py).
    """
    return not all(d.kind == 'CPU' and d.has_amx for d in used)


def set_layout_optimizer(on: bool):
    """Grappler's layout optimizer on or off for the functions traced from now on."""
    tf.config.optimizer.set_experimental_options({'layout_optimizer': on})


def jit_by_default(used: Sequence[Device]) -> bool:
    """XLA on GPUs, not on CPUs.

    XLA's CPU convolutions are not oneDNN's, and the CPU step is slower with it
    (docs/performance.md has the figures). On GPUs it fuses batch norm, ReLU and the
    additions around cuDNN's convolutions, the usual win for small convnets;
    `python -m v2.tools.benchmark --jit_compile=false` measures it on a given card.
    """
    return on_gpu(used)


@contextlib.contextmanager
def ieee_float32():
    """float32 matrix work in IEEE float32 inside, TF32 off (Ampere and later GPUs use TF32,
    a 10-bit mantissa, by default); the setting before is restored after."""
    before = tf.config.experimental.tensor_float_32_execution_enabled()
    tf.config.experimental.enable_tensor_float_32_execution(False)
    try:
        yield
    finally:
        tf.config.experimental.enable_tensor_float_32_execution(before)


def warn_to_stderr(message: str):
    sys.stderr.write(message + '\n')
