"""Each run's metrics.csv, kept right across a resume, and the curves drawn from it."""

import csv

import pytest
import tensorflow as tf
from conftest import quiet, tiny_options, tiny_recipe

from v2.errors import UserError
from v2.nets.model import ModelConfig
from v2.runtime import checkpoint
from v2.tools import curves
from v2.training import loop, record

TINY = ModelConfig(num_layers=8)


def _rows(path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_every_window_and_evaluation_is_a_row_of_the_runs_csv(validated):
    root, records = validated
    rows = _rows(root / 'logs' / 'metrics.csv')
    # Windows and evaluations of the validation images at 2, 4, 6 and 8.
    assert [(int(r['step']), r['split']) for r in rows] == [
        (step, split) for step in (2, 4, 6, 8) for split in ('train', 'validation')]
    for row, (_, _, metrics) in zip(rows, records):
        assert float(row['accuracy']) == pytest.approx(metrics['accuracy'])
        assert float(row['error']) == pytest.approx(1 - metrics['accuracy'])
        assert float(row['cross_entropy']) == pytest.approx(metrics['cross_entropy'])
    assert float(rows[0]['learning_rate']) == pytest.approx(0.05)      # tiny_recipe's first rate
    assert float(rows[4]['learning_rate']) == pytest.approx(0.005)     # after its boundary at 4
    assert rows[1]['loss'] == '' and float(rows[0]['loss']) > 0


@pytest.mark.slow
def test_a_resumed_run_keeps_its_csv_and_its_best_checkpoint(session_data, tmp_path):
    """Rows after the checkpoint resumed from are dropped and written again; the best
    checkpoint's record survives, and a kept accuracy no evaluation can beat stays kept."""
    options = tiny_options(tmp_path, log_per_iterations=2, save_every=2, eval_every=2)
    loop.train(TINY, tiny_recipe(num_iterations=4, validation_split=16), options,
               str(session_data), out=quiet)
    path = tmp_path / 'logs' / 'metrics.csv'
    with open(path, 'a') as f:          # recorded, then killed before its checkpoint
        f.write('6,train,9,9,0.5,0.5,0.1,1\n')
    ckpt = str(tmp_path / 'ckpt')
    best = checkpoint.read_best(ckpt)
    checkpoint.write_best(ckpt, best['checkpoint'], best['step'], 1.0)
    loop.train(TINY, tiny_recipe(num_iterations=6, validation_split=16), options,
               str(session_data), out=quiet)
    rows = _rows(path)
    assert [(int(r['step']), r['split']) for r in rows] == [
        (step, split) for step in (2, 4, 6) for split in ('train', 'validation')]
    assert float(rows[4]['loss']) != 9
    assert checkpoint.read_best(ckpt) == dict(best, validation_accuracy=1.0)


def test_the_curves_of_two_runs_are_drawn_to_one_png(trained, validated, tmp_path):
    png = tmp_path / 'curves.png'
    runs = curves.draw([str(trained), str(validated[0] / 'logs')], str(png))
    assert list(runs) == [trained.name, validated[0].name]
    assert png.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_what_cannot_be_drawn_is_one_line(tmp_path):
    with pytest.raises(UserError, match='no metrics.csv there, in it or in its logs/'):
        curves.draw([str(tmp_path)], str(tmp_path / 'c.png'))
    (tmp_path / 'metrics.csv').write_text('when,what\n1,2\n')
    with pytest.raises(UserError, match='metrics.csv: not a metrics.csv of this trainer'):
        record.read(str(tmp_path / 'metrics.csv'))


def _hparams_of(folder):
    """The session start info TensorBoard's HParams plugin reads from a log folder's events."""
    from tensorboard.plugins.hparams import metadata
    found = []
    for path in folder.glob('events.out.tfevents.*'):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                if value.tag == metadata.SESSION_START_INFO_TAG:
                    found.append(metadata.parse_session_start_info_plugin_data(
                        value.metadata.plugin_data.content))
    return found


def test_the_run_is_a_session_of_tensorboards_hparams_dashboard(validated):
    """Its hyper-parameters are the recipe and network it ran; its metrics, the scalars of
    its train/ and validation/ runs, end at its final figures."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    root, records = validated
    info, = _hparams_of(root / 'logs')
    hparams = {k: (v.number_value if v.HasField('number_value') else
                   v.string_value if v.HasField('string_value') else v.bool_value)
               for k, v in info.hparams.items()}
    assert hparams['network.num_layers'] == 8 and hparams['network.model'] == 'resnet'
    assert hparams['recipe.batch_size'] == 8 and hparams['recipe.validation_split'] == 16
    assert hparams['recipe.schedule.values'] == '0.05,0.005'
    assert hparams['recipe.nesterov'] is False
    validation = EventAccumulator(str(root / 'logs' / 'validation')).Reload()
    last = tf.make_ndarray(validation.Tensors('accuracy')[-1].tensor_proto)
    assert last == pytest.approx(records[-1][2]['accuracy'])
