"""The checks before the first step: each refuses in one line before anything is written.

The folders can be written, the disk can hold the checkpoints the run keeps, a save
cut off earlier left nothing behind, a checkpoint already there reads whole (a newer
one that does not is set aside) and is of this network, and the settings can be
compiled as asked (XLA).
"""

import dataclasses
import os
import shutil
import tempfile

from v2.errors import UserError
from v2.runtime import checkpoint, devices


def prepare_folder(path, setting):
    """Creates `path` if needed and checks that files can be written there."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise UserError('%s=%s is a file; it must be a folder' % (setting, path),
                        settings=(setting,))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UserError('%s=%s: cannot write there (%s)' % (setting, path, e.strerror or e),
                        settings=(setting,)) from None


def check_folder(path, setting):
    """prepare_folder's checks without creating anything (a dry run): `path`, or the nearest
    folder above it that exists, is a folder that can be written."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise UserError('%s=%s is a file; it must be a folder' % (setting, existing)
                        if existing == os.path.abspath(path) else
                        '%s=%s: %s is a file; it must be a folder' % (setting, path, existing),
                        settings=(setting,))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError('%s=%s: cannot write there (%s is not writable)'
                        % (setting, path, existing), settings=(setting,))


def check_free_space(path, ckpt_bytes, keep):
    """Refuses to start when the folder cannot hold the checkpoints it will keep."""
    free = shutil.disk_usage(path).free
    needed = ckpt_bytes * (keep + 1)             # the kept ones and the one being written
    if free < needed:
        raise UserError('ckpt_path=%s: %.1f MB free, but %d checkpoints of %.1f MB need '
                        '%.1f MB; free some space or lower max_to_keep'
                        % (path, free / 1e6, keep + 1, ckpt_bytes / 1e6, needed / 1e6),
                        settings=('ckpt_path', 'max_to_keep'))


def remove_partial_saves(path, out):
    for partial in checkpoint.remove_partial_saves(path):
        out('removed %s, left by a save that was cut off' % partial)


def checkpoint_there(ckpt_path, model_config, out, may_write=True):
    """(the Saved checkpoint to resume from or None, the config to train with).

    It is the newest checkpoint that reads whole: newer ones that do not are set aside
    where may_write (the chief), and skipped elsewhere (checkpoint.newest_readable).
    A checkpoint of another network is refused. One goes on training with the strided
    padding it was trained with (those from before the symmetric padding have
    TensorFlow's SAME)."""
    saved = checkpoint.newest_readable(ckpt_path, out, may_write)
    if saved is None:
        return None, model_config
    if saved.config.strided_padding != model_config.strided_padding:
        out('note: %s was trained with strided_padding=%s; it goes on with that padding'
            % (saved.prefix, saved.config.strided_padding))
        model_config = dataclasses.replace(model_config,
                                           strided_padding=saved.config.strided_padding)
    saved.check_matches(dataclasses.asdict(model_config))
    return saved, model_config


def use_xla(jit_compile, recipe, model_config, replicas, used, out=print):
    """Whether to compile the step: as asked, or where it pays (devices.jit_by_default).

    Two combinations XLA cannot compile are refused when asked for, and run without
    XLA by default:
    - pooled batch-norm statistics over several replicas put an all-reduce inside the
      forward pass, which XLA cannot compile across devices;
    - op determinism on a GPU with max pooling (VGG): XLA's GPU backend refuses the
      gradient of max pooling (select-and-scatter) when determinism is required.
    """
    on_gpu = devices.on_gpu(used)
    refusals = []
    if recipe.sync_batch_norm and replicas > 1:
        refusals.append(('sync_batch_norm over %d replicas: the statistics\' all-reduce sits '
                         'inside the compiled forward pass, which XLA cannot compile across '
                         'devices' % replicas, ('jit_compile', 'sync_batch_norm')))
    if recipe.deterministic and on_gpu and model_config.model == 'vgg':
        refusals.append(('deterministic for model=vgg on a GPU: XLA refuses the gradient of '
                         'max pooling (select-and-scatter) under op determinism',
                         ('jit_compile', 'deterministic', 'model')))
    if jit_compile and refusals:
        why, settings = refusals[0]
        raise UserError('jit_compile with %s; drop one of them' % why, settings=settings)
    if jit_compile is None:
        if refusals and devices.jit_by_default(used):
            out('note: XLA is off for this run (it would be on here): %s' % refusals[0][0])
        return devices.jit_by_default(used) and not refusals
    return jit_compile
