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

import dataclasses
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

    def __str__(self):
        if self.kind == 'GPU':
            return '%s (compute capability %s)' % (
                self.description, '.'.join(map(str, self.compute_capability or ('?',))))
        return 'CPU %s%s' % (self.description, ', bfloat16 units' if self.has_bf16 else '')


def cpu_info() -> tuple[str, bool]:
    """(model name, has bfloat16 units: AVX512-BF16 or AMX-BF16), read from Linux."""
    try:
        with open('/proc/cpuinfo') as f:
            text = f.read()
    except OSError:
        return 'unknown', False
    names = [line.split(':', 1)[1].strip() for line in text.splitlines()
             if line.startswith('model name')]
    return (names[0] if names else 'unknown'), ('avx512_bf16' in text or 'amx_bf16' in text)


def _index(name: str) -> int | None:
    """The GPU index that '/gpu:1', 'GPU:1' or '/device:GPU:1' names; None for other devices."""
    key = name.strip().lower().replace('/device:', '').lstrip('/')
    kind, _, number = key.partition(':')
    return int(number) if kind == 'gpu' and number.isdigit() else None


def setup(strategy: str, devices: Sequence[str] = (), tf32: bool = True,
          out: Callable = print, cpu_devices: int = 0) -> list[Device]:
    """Sets up the GPUs for a run (before any other TensorFlow work); returns those it uses.

    default: one device, the GPU --devices names or GPU 0 (the CPU without GPUs);
    mirrored: the GPUs --devices names, or all; multi_worker: all of this machine's.
    A run that names only CPUs (or splits the CPU) sees no GPU at all.
    """
    physical = tf.config.list_physical_devices('GPU')
    wanted = [i for i in (_index(d) for d in devices) if i is not None]
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
            raise UserError('devices=%s: no device /gpu:%d here; this machine has %d GPU%s'
                            % (','.join(devices), i, len(physical),
                               '' if len(physical) == 1 else 's'), settings=('devices',))
    used = [physical[i] for i in wanted] if wanted else physical
    if strategy == 'default':
        used = used[:1]
    try:
        for gpu in physical:
            tf.config.experimental.set_memory_growth(gpu, True)
        if physical:
            tf.config.set_visible_devices(used, 'GPU')
    except RuntimeError:            # TensorFlow already started in this process (tests, notebooks)
        if physical:
            out("note: TensorFlow's devices were set up before this run; using them as they are")
    tf.config.experimental.enable_tensor_float_32_execution(tf32)
    return describe(used)


def setup_for_evaluation() -> list[Device]:
    """Memory growth on every GPU, so that an evaluator fits beside a running trainer."""
    physical = tf.config.list_physical_devices('GPU')
    try:
        for gpu in physical:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass
    return describe(physical[:1])


def describe(gpus) -> list[Device]:
    """Device records of these physical GPUs, or of the CPU when there are none."""
    if not gpus:
        name, bf16 = cpu_info()
        return [Device('CPU', name, has_bf16=bf16)]
    records = []
    for gpu in gpus:
        details = tf.config.experimental.get_device_details(gpu)
        records.append(Device('GPU', details.get('device_name') or getattr(gpu, 'name', 'GPU'),
                              details.get('compute_capability')))
    return records


def jit_by_default(used: Sequence[Device]) -> bool:
    """XLA on GPUs, not on CPUs.

    On the 2-core CPUs measured here XLA made the ResNet-20 step 1.9x slower (its CPU
    convolutions are not oneDNN's). On GPUs it fuses batch norm, ReLU and the
    additions around cuDNN's convolutions, the usual win for small convnets;
    `python -m v2.tools.benchmark --jit_compile=false` measures it on a given card.
    """
    return any(d.kind == 'GPU' for d in used)


def warn_to_stderr(message: str):
    sys.stderr.write(message + '\n')
