"""The command-line layer: flags, one-line errors, and TensorFlow's start-up kept quiet.

Importing this package (every command does, first) imports TensorFlow and finds its
devices with file descriptor 2 captured: TensorFlow writes CUDA-probing and oneDNN
notes there before its own logging is set up (TensorFlow issue 79029), and they
would bury the progress lines and one-line errors. Of what was captured, the
warnings and errors about a GPU, CUDA, cuDNN, NCCL, XLA or PTX are replayed on stderr
where an NVIDIA driver is present (on a machine without one, CUDA's failure to start
is expected and says nothing); everything is replayed if the import fails.

TensorFlow reads TF_CPP_MIN_LOG_LEVEL once, at start-up, and keeps that level for the
whole process. The commands start it at 1: its warnings and errors reach the user
for the whole run (an allocator running out of memory, a kernel compiled from PTX,
a cache not fully read), its INFO lines do not. The variable is then restored, so
that the processes a command starts choose for themselves. A user who sets
TF_CPP_MIN_LOG_LEVEL gets exactly that level and sees everything at start-up. The
library (v2.data, v2.nets, v2.training, v2.evaluation) does nothing of the kind
when imported.

On x86 CPUs the commands also ask TensorFlow for its oneDNN kernels, unless
TF_ENABLE_ONEDNN_OPTS is set: TensorFlow turns them on by itself only where the CPU
has AVX512-VNNI, AVX512-BF16 or AMX, and on a CPU with AVX2 alone its own (Eigen)
convolution gradients make a training step about half as fast (docs/performance.md).
The variable is read once, when TensorFlow loads, so it is set before the import and
kept: the processes a command starts make the same choice.
"""

import os
import platform
import re
import sys
import tempfile

# A TensorFlow (absl) log line and its severity: 'I0000 00:00:...', 'W1130 ...', 'E0000 ...'.
_LOG_LINE = re.compile(r'^([IWEF])\d{4} ')
_ABOUT_GPUS = re.compile(r'gpu|cuda|cudnn|cublas|nccl|xla|ptx|tensorrt|compute capability',
                         re.IGNORECASE)


def replayed(captured: str, driver: bool) -> list[str]:
    """The start-up lines to show: warnings and errors about the GPU stack, where a
    driver is present, each with the lines that continue its message."""
    if not driver:
        return []
    lines, keep = [], False
    for line in captured.splitlines():
        start = _LOG_LINE.match(line)
        if start:
            keep = start.group(1) != 'I' and bool(_ABOUT_GPUS.search(line))
        elif line.startswith('WARNING: All log messages before absl::InitializeLog()'):
            keep = False
        if keep:
            lines.append(line)
    return lines


def use_onednn():
    """TF_ENABLE_ONEDNN_OPTS=1 on an x86 CPU unless it is set (see above); before TensorFlow
    is imported, or it has no effect."""
    if platform.machine().lower() in ('x86_64', 'amd64'):
        os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '1')


def _import_tensorflow_quietly():
    if 'TF_CPP_MIN_LOG_LEVEL' in os.environ or 'tensorflow' in sys.modules:
        return
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '1'
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()         # CUDA's start-up notes, captured too
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors='replace'))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            del os.environ['TF_CPP_MIN_LOG_LEVEL']
        captured.seek(0)
        from v2.runtime.devices import nvidia_driver
        for line in replayed(captured.read().decode(errors='replace'), bool(nvidia_driver())):
            sys.stderr.write(line + '\n')


use_onednn()
_import_tensorflow_quietly()
