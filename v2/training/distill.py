"""Knowledge distillation (Hinton, Vinyals & Dean 2015): a trained checkpoint as the teacher.

The student's loss is (1 - alpha) * CE(labels, student) + alpha * T^2 *
KL(softmax(teacher / T) || softmax(student / T)); the T^2 keeps the soft term's
gradients at the scale of the hard one's as T grows (Hinton et al., section 2). The
teacher is any network this project trains, read from its checkpoint's own
description; it runs in evaluation mode inside the traced step, on the student's
augmented batch, in the run's compute precision, on every replica, and is never
trained, decayed or saved with the student. The recipe records the teacher's path and
a fingerprint of its weights, so a run cannot be resumed with another teacher.
"""

import hashlib
import json

import numpy as np
import tensorflow as tf

from v2.errors import UserError
from v2.runtime import checkpoint


def fingerprint(prefix: str) -> str:
    """The first 16 hex digits of the SHA-256 of a checkpoint's network weights (the
    model's tensors, by name), read from the file without building a network."""
    reader = tf.train.load_checkpoint(prefix)
    digest = hashlib.sha256()
    for name in sorted(reader.get_variable_to_shape_map()):
        if name.startswith(('model/', checkpoint.EMA_PREFIX)):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(reader.get_tensor(name)).tobytes())
    return digest.hexdigest()[:16]


def check_teacher(ckpt_path: str, num_classes: int, out=print):
    """The teacher's checkpoint (checkpoint.Saved) and fingerprint, checked before anything
    runs: it must exist and read, and class as many classes as the student's data; one
    that had not finished its own training is said so, and used as it is."""
    try:
        saved = checkpoint.Saved(checkpoint.find(ckpt_path)).check_whole()
    except UserError as e:
        raise UserError('teacher_ckpt: %s' % str(e).replace('ckpt_path=', ''),
                        settings=('teacher_ckpt',)) from None
    if saved.config.num_classes != num_classes:
        raise UserError('teacher_ckpt=%s is a %s of %d classes, but the student\'s data has %d'
                        % (ckpt_path, saved.config.describe(), saved.config.num_classes,
                           num_classes), settings=('teacher_ckpt',))
    total = json.loads(saved.training_json or '{}').get('num_iterations')
    if total and saved.step is not None and saved.step < total:
        out('note: the teacher %s stopped at step %d of its %d: distilling from it as it is'
            % (saved.prefix, saved.step, total))
    return saved, fingerprint(saved.prefix)


class Teacher(tf.Module):
    """The teacher's network in evaluation mode, fed the student's normalised batch shifted
    to the teacher's own pixel mean (the two sets' means may differ)."""

    def __init__(self, net, shift):
        super().__init__(name='teacher')
        self.net = net
        self.shift = tf.Variable(shift, trainable=False, name='mean_shift')

    def __call__(self, images):
        return tf.stop_gradient(tf.cast(
            self.net(images + tf.cast(self.shift, images.dtype), training=False), tf.float32))


def load_teacher(prefix: str, dtype, student_mean) -> Teacher:
    """The teacher of checkpoint `prefix` restored (its weight averages where it has them),
    computing in the student's dtype, its variables created in the current strategy's scope
    so that every replica holds a copy."""
    from v2.evaluation.evaluate import Restorer
    saved = checkpoint.Saved(checkpoint.find(prefix))
    restorer = Restorer(saved, out=lambda line: None, compute_dtype=dtype)
    net = restorer.load(saved)
    return Teacher(net, np.asarray(student_mean, np.float32) - saved.pixel_mean)


def loss(hard, student_logits, teacher_logits, alpha: float, temperature: float):
    """Per-example loss: (1 - alpha) * hard + alpha * T^2 * KL(teacher_T || student_T),
    with `hard` the per-example cross-entropy against the labels (or mixed targets)."""
    t = temperature
    teacher = tf.nn.log_softmax(teacher_logits / t)
    kl = tf.reduce_sum(tf.exp(teacher) * (teacher - tf.nn.log_softmax(student_logits / t)), -1)
    return (1.0 - alpha) * hard + alpha * t * t * kl
