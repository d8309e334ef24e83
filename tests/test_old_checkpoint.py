"""A checkpoint written by an earlier trainer still evaluates and resumes.

tests/fixtures/resnet8_515f061.tar.xz is a ResNet-8 run with weight averages, two steps,
as the trainer of commit 515f061 wrote it (tests/fixtures/make_old_checkpoint.py says
how). Its figures are checked against numpy's forward pass of the tensors in the archive,
read with TensorFlow's own checkpoint reader, not through v2's restore code.
"""

import json
import tarfile

import numpy as np
import numpy_ref as ref
import pytest
import tensorflow as tf
from conftest import ROOT, numpy_test_set, write_cifar

from v2.cli import app, evaluator, flags, trainer
from v2.nets import model

ARCHIVE = ROOT / 'tests' / 'fixtures' / 'resnet8_515f061.tar.xz'
RECIPE = ['--num_layers=8', '--batch_size=8', '--log_per_iterations=1', '--save_every=1',
          '--ema_decay=0.9', '--seed=1', '--deterministic']


@pytest.fixture
def old_run(tmp_path):
    """(the extracted run folder, the data it was trained on: conftest's tiny files)."""
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, filter='data')
    return tmp_path / 'resnet8', write_cifar(tmp_path / 'data')


def nets_of(prefix):
    """(the live net, the averaged net) of the checkpoint at `prefix`: the live weights read
    by tf.train.Checkpoint, the averages assigned from the ema/averages/<i> tensors, which
    follow the net's variables in order."""
    live = model.build(model.ModelConfig(num_layers=8))
    tf.train.Checkpoint(model=live).read(str(prefix)).expect_partial()
    reader = tf.train.load_checkpoint(str(prefix))
    averaged = model.build(model.ModelConfig(num_layers=8))
    for i, variable in enumerate(averaged.variables):
        variable.assign(reader.get_tensor('ema/averages/%d/.ATTRIBUTES/VARIABLE_VALUE' % i))
    return live, averaged, reader


def test_the_old_checkpoint_evaluates_to_numpys_figures(old_run, tmp_path):
    """The evaluator's accuracy and cross-entropy of the old checkpoint, live weights and
    averages, equal numpy's forward pass of the archive's tensors."""
    run, data = old_run
    live, averaged, reader = nets_of(run / 'ckpt-2')
    for variable in live.variables:      # the archive's values, multiples of 1/64, were read
        np.testing.assert_array_equal(variable.numpy() * 64, np.round(variable.numpy() * 64))
    x, labels = numpy_test_set(data)
    for net, setting in ((live, '--noaveraged'), (averaged, '--averaged')):
        out = tmp_path / ('%s.json' % setting)
        status, line = app.call(evaluator.main, ['run_evaluator.py', '--data_path=%s' % data,
                                                 '--ckpt_path=%s' % run, setting,
                                                 '--output_json=%s' % out], flags.EVALUATOR)
        assert status == 0, line
        figures, = json.loads(out.read_text())['checkpoints']
        logits = ref.preact_resnet_logits(net, x)
        assert figures['step'] == 2
        assert figures['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == labels))
        assert figures['cross_entropy'] == pytest.approx(
            ref.softmax_cross_entropy(logits, labels).mean(), rel=1e-4)


def test_the_old_checkpoint_resumes_with_its_averages(old_run, capsys):
    """Resumed for one step, the run starts at step 2 from the archive and its averages go on
    from the archive's: after step 3 each is d * old + (1 - d) * new weight, d = min(0.9,
    (1 + 2) / (10 + 2)) = 0.25 (v2.runtime.ema, the update at step t = 2); averages started
    afresh from the restored weights would differ."""
    run, data = old_run
    before = tf.train.load_checkpoint(str(run / 'ckpt-2'))
    status, line = app.call(trainer.main, ['run_trainer.py', '--data_path=%s' % data,
                                           '--ckpt_path=%s' % run, '--num_iterations=3',
                                           '--log_path=%s' % (run.parent / 'logs'), *RECIPE],
                            flags.TRAINER)
    assert status == 0, line
    assert 'resuming at step 2 from %s' % (run / 'ckpt-2') in capsys.readouterr().out
    live, averaged, after = nets_of(run / 'ckpt-3')
    assert after.get_tensor('step/.ATTRIBUTES/VARIABLE_VALUE') == 3
    for i, (new, average) in enumerate(zip(live.variables, averaged.variables)):
        old = before.get_tensor('ema/averages/%d/.ATTRIBUTES/VARIABLE_VALUE' % i)
        np.testing.assert_allclose(average.numpy(), 0.25 * old + 0.75 * new.numpy(),
                                   rtol=1e-6, atol=1e-7)
