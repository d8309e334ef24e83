"""Knowledge distillation from a trained checkpoint: the loss against numpy, a teacher that
never moves and is never saved, and the one-line refusals.

The teacher is the session's trained ResNet-8 (conftest's `trained`: checkpoints at steps
3 and 6 of 6).
"""

import os

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from conftest import all_tensors, model_weights, quiet, tiny_options, tiny_recipe
from test_settings import MEAN, TINY, batch, recipe, state_of, train

from v2.cli import app, flags, trainer
from v2.errors import UserError
from v2.evaluation import evaluate
from v2.training import distill, loop


def teacher_of(trained):
    return str(trained / 'ckpt' / 'ckpt-6')


def test_the_loss_is_hintons_mix_of_the_labels_and_the_softened_teacher():
    """(1 - a) CE + a T^2 KL(p_teacher,T || p_student,T), in numpy; T = 1, a = 0 is the CE."""
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(6, 10)) * 3, rng.normal(size=(6, 10)) * 3
    labels = rng.integers(0, 10, 6)
    hard = ref.softmax_cross_entropy(student, labels)
    for alpha, t in ((0.0, 1.0), (0.9, 4.0), (0.5, 2.0)):
        p_t = np.exp(ref.log_softmax(teacher / t))
        kl = (p_t * (ref.log_softmax(teacher / t) - ref.log_softmax(student / t))).sum(axis=1)
        got = distill.loss(tf.constant(hard, tf.float32), tf.constant(student, tf.float32),
                           tf.constant(teacher, tf.float32), alpha, t).numpy()
        np.testing.assert_allclose(got, (1 - alpha) * hard + alpha * t * t * kl, rtol=1e-5)
    np.testing.assert_allclose(distill.loss(tf.constant(hard, tf.float32), tf.constant(
        student, tf.float32), tf.constant(teacher, tf.float32), 0.0, 1.0).numpy(), hard,
        rtol=1e-6)


def test_the_steps_loss_is_numpys_with_the_teachers_logits(trained):
    """One step of the trainer's own state and step: its cross-entropy term is numpy's
    distillation loss of the student's logits (before the step) and the teacher's, the
    teacher restored apart by the evaluator and fed the images with its own mean removed."""
    the_recipe = recipe(teacher_ckpt=teacher_of(trained), kd_alpha=0.7, kd_temperature=3.0)
    images, labels = batch()                       # prepared with MEAN, as the host path
    state = state_of(the_recipe)
    student = state.model(tf.constant(images), training=True).numpy().astype(np.float64)
    net, saved = evaluate.load_network(teacher_of(trained), out=quiet)
    teacher = net(tf.constant(images + MEAN - saved.pixel_mean), training=False).numpy()
    t, a = 3.0, 0.7
    p_t = np.exp(ref.log_softmax(teacher / t))
    kl = (p_t * (ref.log_softmax(teacher / t) - ref.log_softmax(student / t))).sum(axis=1)
    expected = ((1 - a) * ref.softmax_cross_entropy(student, labels) + a * t * t * kl).mean()
    state = state_of(the_recipe)                   # its statistics as before the pass above
    sums = train(state, the_recipe, [(images, labels)])
    assert sums['cross_entropy'] == pytest.approx(expected, rel=1e-4)


def test_the_teacher_never_moves_and_is_not_saved_with_the_student(trained, session_data,
                                                                   tmp_path):
    teacher = teacher_of(trained)
    the_recipe = tiny_recipe(teacher_ckpt=teacher)
    state = state_of(the_recipe)
    train(state, the_recipe, [batch(), batch(1)], steps=2)
    fresh, _ = evaluate.load_network(teacher, out=quiet)    # the checkpoint as it is
    assert len(state.teacher.net.variables) == len(model_weights(teacher))
    for used, stored in zip(state.teacher.net.variables, fresh.variables):
        np.testing.assert_array_equal(used.numpy(), stored.numpy(), err_msg=used.name)
    result = loop.train(TINY, the_recipe, tiny_options(tmp_path), str(session_data), out=quiet)
    student = all_tensors(result.checkpoint)
    plain = loop.train(TINY, tiny_recipe(), tiny_options(tmp_path / 'plain'),
                       str(session_data), out=quiet)
    assert student.keys() == all_tensors(plain.checkpoint).keys()     # no teacher variable
    assert not any('teacher' in k for k in student)
    recipe_json = student['training/.ATTRIBUTES/VARIABLE_VALUE'].decode()
    assert teacher in recipe_json and distill.fingerprint(teacher) in recipe_json


def test_a_resume_with_another_teacher_is_refused_and_nothing_is_written(trained, session_data,
                                                                         tmp_path):
    loop.train(TINY, tiny_recipe(num_iterations=3, teacher_ckpt=teacher_of(trained)),
               tiny_options(tmp_path), str(session_data), out=quiet)
    before = sorted(os.listdir(tmp_path / 'ckpt'))
    other = str(trained / 'ckpt' / 'ckpt-3')
    with pytest.raises(UserError, match='a teacher cannot change during a run'):
        loop.train(TINY, tiny_recipe(teacher_ckpt=other), tiny_options(tmp_path),
                   str(session_data), out=quiet)
    with pytest.raises(UserError, match='started with the teacher'):
        loop.train(TINY, tiny_recipe(), tiny_options(tmp_path), str(session_data), out=quiet)
    with pytest.raises(UserError, match='a teacher cannot change during a run'):   # dry run too
        loop.dry_run(TINY, tiny_recipe(teacher_ckpt=other), tiny_options(tmp_path),
                     str(session_data), out=quiet)
    assert sorted(os.listdir(tmp_path / 'ckpt')) == before


def test_a_missing_or_mismatched_teacher_is_one_line_and_a_mid_way_one_a_note(trained,
                                                                            session_data,
                                                                            tmp_path):
    status, line = app.call(trainer.main, [
        'run_trainer.py', '--data_path=%s' % session_data, '--num_layers=8',
        '--ckpt_path=%s' % (tmp_path / 'run'), '--teacher_ckpt=%s' % (tmp_path / 'none')],
        flags.TRAINER)
    assert status == 1 and '--teacher_ckpt' in line and 'no such checkpoint' in line
    assert not (tmp_path / 'run').exists()
    with pytest.raises(UserError, match='of 10 classes, but the student\'s data has 100'):
        distill.check_teacher(teacher_of(trained), 100)
    notes = []
    distill.check_teacher(str(trained / 'ckpt' / 'ckpt-3'), 10, out=notes.append)
    assert notes == ['note: the teacher %s stopped at step 3 of its 6: distilling from it as '
                     'it is' % (trained / 'ckpt' / 'ckpt-3')]
    distill.check_teacher(teacher_of(trained), 10, out=notes.append)
    assert len(notes) == 1
