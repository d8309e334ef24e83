"""Out of device memory, said in one line: where, what, at which batch, and what to try.

TensorFlow raises ResourceExhaustedError when a tensor does not fit on the device (a
net or batch too large for the card); its message is a long allocator report. The
trainer, the evaluator and the benchmark turn it into a UserError naming the device
(and, on a GPU, the peak memory TensorFlow saw in use there), the network, the batch
and the precision, and the settings that need less memory. An error raised by an
evaluation is marked (mark_evaluating), so that the trainer's line names its batch.
"""

import re

import tensorflow as tf

from v2.errors import UserError

OOM = tf.errors.ResourceExhaustedError


def mark_evaluating(error):
    """Marks an out-of-memory error as raised by an evaluation."""
    error.evaluating = True


def device_of(error, used=()):
    """'GPU:0' from the error's text ('... on /job:localhost/.../device:GPU:0 by allocator'),
    else the first device the run uses ('GPU:0', 'CPU:0')."""
    found = re.findall(r'device:([A-Z]+:\d+)', str(error))
    if found:
        return found[0]
    return '%s:0' % used[0].kind if used else 'CPU:0'


def gpu_peak(device):
    """The peak memory (bytes) TensorFlow allocated on a GPU, or None where it says nothing."""
    if not device.startswith('GPU'):
        return None
    try:
        return tf.config.experimental.get_memory_info(device)['peak']
    except (ValueError, KeyError, RuntimeError, tf.errors.OpError):
        return None


def out_of_memory(error, *, doing, network, batch_size, precision, used=(),
                  batch_setting='batch_size', more_devices=True, checkpoints=False,
                  last_checkpoint=None):
    """The UserError for a ResourceExhaustedError `error`.

    doing: 'training', 'evaluating', 'timing'; network: its name (ModelConfig.
    describe()); used: the run's devices (v2.runtime.devices.Device), for the device's
    name; checkpoints: whether the program writes checkpoints, and last_checkpoint the
    last good one (None: none yet).
    """
    device = device_of(error, used)
    kind, _, index = device.partition(':')
    same_kind = [d for d in used if d.kind == kind]
    name = same_kind[int(index)].description if index.isdigit() and int(index) < len(
        same_kind) else ''
    peak = gpu_peak(device)
    where = ', '.join(filter(None, [name, 'peak %.2f GiB in use' % (peak / 2 ** 30)
                                    if peak else '']))
    tries = ['a smaller %s' % batch_setting]
    if precision == 'float32':
        tries.append('precision=bfloat16 (or float16)')
    if more_devices:
        tries.append('more devices (distribution_strategy=mirrored)')
    if checkpoints:
        kept = ('the last good checkpoint is %s and nothing written was lost' % last_checkpoint
                if last_checkpoint else 'no checkpoint was written yet')
    else:
        kept = 'nothing was written'
    return UserError('out of memory on %s%s %s %s at batch %d in %s: try %s; %s'
                     % (device, ' (%s)' % where if where else '', doing, network, batch_size,
                        precision, ', '.join(tries[:-1]) + ' or ' + tries[-1]
                        if len(tries) > 1 else tries[0], kept),
                     settings=(batch_setting, 'precision', 'distribution_strategy'))
