"""The experiments: each command at a toy size (slow), resume bookkeeping, the anatomy they draw."""

import csv
import json
import os

import pytest
import tensorflow as tf
from conftest import ROOT

from v2.cli import app
from v2.errors import UserError
from v2.nets.model import ModelConfig
from v2.tools import anatomy, experiments, figures, flags

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TOY = ['--depths=8', '--seeds=1,2', '--num_iterations=4', '--log_per_iterations=2',
       '--eval_every=2', '--batch_size=8', '--lr_values=0.1,0.01', '--lr_boundaries=2',
       '--resnet_version=1', '--shortcut_type=A_subsample', '--deterministic']


def run(*args):
    return app.call(experiments.main, ['experiments.py', *args], flags.EXPERIMENTS)


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory, session_data):
    root = tmp_path_factory.mktemp('figure6')
    status, line = run('figure6', '--data_path=%s' % session_data, '--out=%s' % (root / 'files'),
                       '--work_dir=%s' % (root / 'work'), *TOY)
    assert status == 0, line
    return root


@pytest.mark.slow
def test_figure6_writes_every_point_the_summary_and_both_panels(toy_run, session_data):
    with open(toy_run / 'files' / 'figure6.csv') as f:
        rows = list(csv.DictReader(f))
    # 2 networks x 1 depth x 2 seeds x 2 recorded steps x (train, test)
    assert len(rows) == 16
    assert {(r['network'], r['seed'], r['step'], r['split']) for r in rows} == {
        (n, s, t, p) for n in ('plain', 'resnet') for s in ('1', '2') for t in ('2', '4')
        for p in ('train', 'test')}
    assert all(0.0 <= float(r['error']) <= 1.0 for r in rows)
    summary = json.loads((toy_run / 'files' / 'figure6.json').read_text())
    assert summary['training_images'] == 80 and summary['recipe']['num_iterations'] == 4
    final = {(e['network'], e['depth']): e for e in summary['final']}
    assert set(final) == {('plain', 8), ('resnet', 8)}
    last_test = [float(r['error']) for r in rows
                 if (r['network'], r['split'], r['step']) == ('plain', 'test', '4')]
    assert final['plain', 8]['test']['per_seed'] == pytest.approx(last_test)
    table = (toy_run / 'files' / 'figure6.md').read_text()
    assert '| plain-8 v1 | 2 | ' in table and '| ResNet-8 v1 | 2 | ' in table
    assert '80 training images, 24 test images (not the full CIFAR-10' in table
    pytest.importorskip('matplotlib', reason='drawing needs the optional matplotlib')
    assert (toy_run / 'files' / 'figure6.png').read_bytes()[:8] == PNG_MAGIC


@pytest.mark.slow
def test_figure6_is_reproducible_and_a_finished_grid_is_not_retrained(toy_run, session_data,
                                                                      tmp_path, capsys):
    capsys.readouterr()
    status, _ = run('figure6', '--data_path=%s' % session_data, '--out=%s' % (tmp_path / 'a'),
                    '--work_dir=%s' % (tmp_path / 'work'), '--noplot', *TOY)
    assert status == 0
    assert ((tmp_path / 'a' / 'figure6.csv').read_text()
            == (toy_run / 'files' / 'figure6.csv').read_text())
    capsys.readouterr()
    status, _ = run('figure6', '--data_path=%s' % session_data, '--out=%s' % (tmp_path / 'b'),
                    '--work_dir=%s' % (tmp_path / 'work'), '--noplot', *TOY)
    assert status == 0 and capsys.readouterr().out.count('nothing to train') == 4
    assert ((tmp_path / 'b' / 'figure6.csv').read_text()
            == (toy_run / 'files' / 'figure6.csv').read_text())


@pytest.mark.slow
def test_a_work_dir_of_another_recipe_is_refused_untouched(toy_run, session_data):
    recipe = (toy_run / 'work' / 'recipe.json').read_text()
    status, line = run('figure6', '--data_path=%s' % session_data,
                       '--out=%s' % (toy_run / 'other'), '--work_dir=%s' % (toy_run / 'work'),
                       *TOY, '--weight_decay=0.01')
    assert status == 1
    assert line == ('experiments.py: error: --work_dir=%s holds runs made with another recipe; '
                    'choose another --work_dir (nothing there was changed)' % (toy_run / 'work'))
    assert (toy_run / 'work' / 'recipe.json').read_text() == recipe
    assert not (toy_run / 'other').exists()


@pytest.mark.slow
def test_the_table_trains_every_depth_and_seed_and_evaluates_the_last_checkpoints(
        session_data, tmp_path):
    args = ['--data_path=%s' % session_data, '--out=%s' % tmp_path, '--depths=8,14',
            '--seeds=1,2', '--work_dir=%s' % (tmp_path / 'work')] + TOY[2:]
    status, line = run('table', *args)
    assert status == 0, line
    with open(tmp_path / 'table.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['depth'], r['seed']) for r in rows] == [('8', '1'), ('8', '2'), ('14', '1'),
                                                       ('14', '2')]
    table = (tmp_path / 'table.md').read_text()
    assert '| ResNet-8 v1 | 2 |' in table and '| ResNet-14 v1 | 2 |' in table
    assert '80 training images, 24 test images (not the full CIFAR-10' in table
    first = (tmp_path / 'table.csv').read_text()
    status, line = run('table', *args)                      # resumed: nothing retrained
    assert status == 0 and (tmp_path / 'table.csv').read_text() == first


@pytest.mark.slow
def test_a_table_of_a_figures_resnets_trains_nothing_again(toy_run, session_data, tmp_path,
                                                           capsys):
    capsys.readouterr()
    status, line = run('table', '--data_path=%s' % session_data, '--out=%s' % tmp_path,
                       '--work_dir=%s' % (toy_run / 'work'), *TOY)
    assert status == 0, line
    assert capsys.readouterr().out.count('nothing to train') == 2
    with open(toy_run / 'files' / 'figure6.csv') as f:
        final = [float(r['error']) for r in csv.DictReader(f)
                 if (r['network'], r['split'], r['step']) == ('resnet', 'test', '4')]
    with open(tmp_path / 'table.csv') as f:
        assert [float(r['test_error']) for r in csv.DictReader(f)] == pytest.approx(final)


@pytest.mark.slow
def test_the_switches_compare_each_option_with_the_recipe(toy_run, session_data, tmp_path,
                                                          capsys):
    capsys.readouterr()
    status, line = run('switches', '--data_path=%s' % session_data, '--out=%s' % tmp_path,
                       '--seeds=1', '--num_layers=8', '--switches=cutout,mixup,distill,tta',
                       '--work_dir=%s' % (toy_run / 'work'), *TOY[2:])
    assert status == 0, line
    assert capsys.readouterr().out.count('nothing to train') == 1    # figure6's ResNet-8
    summary = json.loads((tmp_path / 'switches.json').read_text())
    assert [e['variant'] for e in summary['results']] == ['default', 'cutout', 'mixup',
                                                          'distill', 'tta']
    assert '| cutout | cutout of 16x16' in (tmp_path / 'switches.md').read_text()
    # distill trained its ResNet-56 teacher first, and the student names it in its recipe.
    work = toy_run / 'work'
    teacher = work / 'resnet56_seed1'
    student = tf.train.load_checkpoint(
        tf.train.latest_checkpoint(str(work / 'distill_resnet8_seed1')))
    assert str(teacher) in student.get_tensor('training/.ATTRIBUTES/VARIABLE_VALUE').decode()


def test_results_show_a_spread_only_where_there_are_seeds_to_spread():
    assert experiments.percent([0.25, 0.35]) == '30.00 ± 7.07'
    assert experiments.percent([0.2901]) == '29.01'


def test_points_after_the_checkpoint_a_run_resumes_from_are_dropped(tmp_path):
    step = tf.Variable(0, dtype=tf.int64)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(step=step), str(tmp_path), 3)
    manager.save(checkpoint_number=2)
    lines = [{'step': s, 'split': p, 'error': 0.5, 'cross_entropy': 1.0}
             for s in (2, 4) for p in ('train', 'test')]
    (tmp_path / 'points.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in lines))
    points = experiments.Points(str(tmp_path))
    assert [(r['step'], r['split']) for r in points.rows] == [(2, 'train'), (2, 'test')]
    points(4, 'train', {'accuracy': 0.75, 'cross_entropy': 0.9})
    kept = [json.loads(line) for line in (tmp_path / 'points.jsonl').read_text().splitlines()]
    assert kept[-1] == {'step': 4, 'split': 'train', 'error': 0.25, 'cross_entropy': 0.9}
    assert len(kept) == 3


def test_anatomy_reads_branch_and_shortcut_from_the_traced_units():
    ours = anatomy.describe(ModelConfig(num_layers=20))
    assert [p['shape'] for p in ours['parts'][1:4]] == [[32, 32, 16], [16, 16, 32], [8, 8, 64]]
    assert sum(p['parameters'] for p in ours['parts']) == ours['parameters'] == 269722
    first, down = ours['units'][0], ours['units'][1]
    assert first['shared'] == ['BN', 'ReLU'] and first['shortcut'] == []      # identity
    assert down['branch'][2] == 'conv 3x3, 32, /2'
    assert down['shortcut'] == ['avg pool 2x2, /2', 'zero-pad channels 16->32']
    paper = anatomy.describe(ModelConfig(num_layers=20, resnet_version=1,
                                         shortcut_type='A_subsample'))
    assert paper['units'][1]['shortcut'] == ['subsample /2', 'zero-pad channels 16->32']
    assert paper['units'][1]['after'] == ['ReLU']
    projection = anatomy.describe(ModelConfig(num_layers=20, shortcut_type='B'))
    assert projection['units'][1]['shortcut'] == ['conv 1x1, 32, /2']
    plain = anatomy.describe(ModelConfig(num_layers=8, shortcut_connections=False))
    assert not plain['units'][0]['residual'] and plain['units'][0]['shortcut'] == []


def test_the_committed_architecture_is_what_the_model_says(tmp_path):
    status, line = run('architecture', '--out=%s' % tmp_path, '--noplot')
    assert status == 0, line
    described = json.loads((tmp_path / 'architecture.json').read_text())
    assert described['name'] == 'ResNet-20' and len(described['units']) == 3
    assert described == json.loads((ROOT / 'files' / 'architecture.json').read_text())


def test_the_figure_draws_the_mean_and_the_spread_over_seeds():
    rows = [dict(network='resnet', depth=20, seed=seed, step=step, split='test', error=error)
            for seed, step, error in ((1, 100, 0.5), (2, 100, 0.3), (3, 100, 0.4),
                                      (1, 200, 0.2), (2, 200, 0.2), (3, 200, 0.5))]
    rows.append(dict(rows[0], network='plain', error=0.9))
    steps, mean, low, high = figures.mean_curves(rows, 'resnet', 'test')[20]
    assert steps == [100, 200]
    assert mean == pytest.approx([40.0, 30.0])
    assert low == pytest.approx([30.0, 20.0]) and high == pytest.approx([50.0, 50.0])


def test_the_reference_figure_says_keras_trained_it():
    assert figures.figure6_title('out/figure6_reference.csv', 1).startswith('Keras 3 model')
    assert figures.figure6_title('out/figure6.csv', 3) == (
        'mean of 3 seeds; dashed: training error, bold: test error '
        '(shaded: lowest to highest seed)')


def test_figures_refuse_a_csv_that_is_not_figure6_points(tmp_path):
    bad = tmp_path / 'figure6_other.csv'
    bad.write_text('a,b\n1,2\n')
    with pytest.raises(UserError, match='figure6_other.csv: not a figure6 CSV'):
        figures.read_points(str(bad))


@pytest.mark.parametrize('args, message', [
    ([], 'expected one command, figure6 or table or switches or calibration or architecture'),
    (['figure6'], '--data_path: give the folder of the CIFAR-10 binary files'),
    (['figure6', '--data_path=/nonexistent/x'], '--data_path=/nonexistent/x: no such folder'),
    (['figure6', '--data_path={data}', '--depths=21'], '--depths=21: num_layers=21: the depth '
                                                        'must be 6n+2'),
    (['figure6', '--data_path={data}', '--networks=highway'], '--networks=highway: expected'),
    (['figure6', '--data_path={data}', '--depths=8'], 'figure6 plots the test error: give '
                                                       '--eval_every'),
    (['switches', '--data_path={data}', '--switches=dropout'],
     '--switches=dropout: expected some of'),
    (['table', '--data_path={data}', '--tta'], '--tta is not a flag of experiments.py'),
    (['table', '--data_path={data}', '--seeds=1,two'],
     '--seeds=1,two: expected a comma-separated list of integers'),
    (['table', '--data_path={data}', '--depths='], '--depths: give at least one value'),
])
def test_bad_commands_get_one_line_and_write_nothing(args, message, session_data, tmp_path):
    status, line = run(*[a.format(data=session_data) for a in args],
                       '--work_dir=%s' % (tmp_path / 'work'))
    assert status in (1, 2) and line.startswith('experiments.py: error: ') and message in line
    assert not (tmp_path / 'work').exists()


@pytest.mark.slow
def test_figure6_keeps_the_runs_of_a_previous_figure_and_trains_only_the_new_ones(
        toy_run, session_data, tmp_path):
    """With --previous the seeds 1 and 2 of toy_run's figure are kept point for point (their
    work folders are not there: nothing could resume them) and only seed 3 is trained; the
    summary names the seeds of every network and depth."""
    status, line = run('figure6', '--data_path=%s' % session_data, '--out=%s' % (tmp_path / 'out'),
                       '--work_dir=%s' % (tmp_path / 'work'), *TOY, '--seeds=1,2,3',
                       '--previous=%s' % (toy_run / 'files' / 'figure6.csv'))
    assert status == 0, line
    assert sorted(os.listdir(tmp_path / 'work')) == ['plain8_seed3', 'recipe.json',
                                                     'resnet8_seed3']
    with open(toy_run / 'files' / 'figure6.csv') as f:
        before = list(csv.DictReader(f))
    with open(tmp_path / 'out' / 'figure6.csv') as f:
        after = list(csv.DictReader(f))
    assert [r for r in after if r['seed'] != '3'] == before
    assert len(after) == len(before) * 3 // 2
    with open(tmp_path / 'out' / 'figure6.json') as f:
        summary = json.load(f)
    assert summary['seeds'] == [1, 2, 3]
    assert [e['seeds'] for e in summary['final']] == [[1, 2, 3], [1, 2, 3]]


def test_figure6_refuses_a_previous_figure_of_another_recipe(session_data, tmp_path):
    (tmp_path / 'figure6.csv').write_text('network,depth,seed,step,split,error,cross_entropy\n')
    (tmp_path / 'figure6.json').write_text(json.dumps({'recipe': {'weight_decay': 0.5}}))
    status, line = run('figure6', '--data_path=%s' % session_data, *TOY,
                       '--work_dir=%s' % (tmp_path / 'work'), '--out=%s' % (tmp_path / 'out'),
                       '--previous=%s' % (tmp_path / 'figure6.csv'))
    assert status == 1
    assert line.startswith('experiments.py: error: --previous=%s: its runs were made with '
                           'another ' % (tmp_path / 'figure6.csv'))
    assert 'recipe.weight_decay' in line and 'training_images' in line
    assert not (tmp_path / 'work').exists() and not (tmp_path / 'out').exists()


def test_a_previous_figure_from_before_a_setting_existed_joins_with_it_at_its_default(tmp_path):
    """A figure6.json written before mixup existed records no mixup_alpha: it was 0 then, as
    now, so its runs join; the same figure with another weight decay does not."""
    import types

    from v2.training.recipe import Recipe
    recipe, base = Recipe(weight_decay=1e-4), ModelConfig(num_layers=20, resnet_version=1)
    grid = types.SimpleNamespace(recipe=recipe, train_images=2500, test_images=1017)
    (tmp_path / 'figure6.csv').write_text('network,depth,seed,step,split,error,cross_entropy\n'
                                          'plain,20,1,100,train,0.794375,2.071814\n')
    old = json.loads(recipe.to_json())
    del old['mixup_alpha']
    record = {'recipe': old, 'network': json.loads(base.to_json()), 'training_images': 2500,
              'test_images': 1017, 'implementation': 'v2'}
    (tmp_path / 'figure6.json').write_text(json.dumps(record))
    rows = experiments.previous_rows(str(tmp_path / 'figure6.csv'), grid, base, 'v2')
    assert rows == [dict(network='plain', depth=20, seed=1, step=100, split='train',
                         error=0.794375, cross_entropy=2.071814)]
    with pytest.raises(UserError, match='another implementation'):
        experiments.previous_rows(str(tmp_path / 'figure6.csv'), grid, base,
                                  'Keras 3 (v2.tools.keras_nets)')
    record['recipe']['weight_decay'] = 5e-4
    (tmp_path / 'figure6.json').write_text(json.dumps(record))
    with pytest.raises(UserError, match=r'another recipe\.weight_decay;'):
        experiments.previous_rows(str(tmp_path / 'figure6.csv'), grid, base, 'v2')


@pytest.mark.slow
def test_the_keras_reference_trains_the_same_grid(session_data, tmp_path):
    status, line = run('figure6', '--reference', '--data_path=%s' % session_data,
                       '--out=%s' % tmp_path, '--work_dir=%s' % (tmp_path / 'work'), '--noplot',
                       *TOY[:1], '--seeds=1', *TOY[2:])
    assert status == 0, line
    with open(tmp_path / 'figure6_reference.csv') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r['network'] for r in rows} == {'plain', 'resnet'}
    summary = json.loads((tmp_path / 'figure6_reference.json').read_text())
    assert summary['implementation'].startswith('Keras 3')
    assert 'trained through the Keras 3 model' in (tmp_path / 'figure6_reference.md').read_text()
    # Beside figure6's own runs in one work_dir, each keeps its folders and trains.
    status, line = run('figure6', '--data_path=%s' % session_data, '--out=%s' % tmp_path,
                       '--work_dir=%s' % (tmp_path / 'work'), '--noplot', *TOY[:1], '--seeds=1',
                       '--networks=resnet', *TOY[2:])
    assert status == 0, line
    with open(tmp_path / 'figure6.csv') as f:
        ours = list(csv.DictReader(f))
    keras = [r for r in rows if r['network'] == 'resnet']
    assert [(r['step'], r['split']) for r in ours] == [(r['step'], r['split']) for r in keras]
    assert [r['cross_entropy'] for r in ours] != [r['cross_entropy'] for r in keras]
    assert sorted(os.listdir(tmp_path / 'work')) == ['keras_plain8_seed1', 'keras_resnet8_seed1',
                                                     'recipe.json', 'resnet8_seed1']


@pytest.mark.slow
def test_calibration_reports_last_and_best_and_the_temperatures_effect(session_data,
                                                                        tmp_path):
    """Each seed's row holds what the evaluator reports for its run folder; without a
    validation split the command is refused before anything is trained."""
    from v2.evaluation import evaluate
    args = ['--data_path=%s' % session_data, '--out=%s' % tmp_path, '--depths=8', '--seeds=1,2',
            '--work_dir=%s' % (tmp_path / 'work'), *TOY[2:]]
    status, line = run('calibration', *args)
    assert status == 1 and 'holds out no validation images' in line
    assert not (tmp_path / 'work').exists()
    status, line = run('calibration', *args, '--validation_split=16')
    assert status == 0, line
    with open(tmp_path / 'calibration.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['seed'] for r in rows] == ['1', '2']
    for row in rows:
        last, best = evaluate.evaluate_checkpoints(
            str(tmp_path / 'work' / ('resnet8_seed%s' % row['seed'])), evaluate.EvalOptions(
                data_path=str(session_data), temperature_scaling=True),
            out=lambda line: None).results
        near = dict(rel=1e-4, abs=1e-6)                      # the CSV keeps 6 digits
        assert float(row['last_error']) == pytest.approx(last.metrics.error, **near)
        assert float(row['best_error']) == pytest.approx(best.metrics.error, **near)
        assert int(row['best_step']) == best.step
        assert float(row['ece_scaled']) == pytest.approx(last.scaled.ece, **near)
        assert float(row['temperature']) == pytest.approx(last.scaled.temperature, **near)
    summary = json.loads((tmp_path / 'calibration.json').read_text())
    assert summary['results'][0]['runs'] == 2
    assert '| ResNet-8 v1 |' in (tmp_path / 'calibration.md').read_text()


def test_switches_refuses_depths_it_would_ignore(session_data, tmp_path):
    status, line = run('switches', '--data_path=%s' % session_data, '--out=%s' % tmp_path,
                       '--work_dir=%s' % (tmp_path / 'work'), '--depths=8,14')
    assert (status, line) == (1, 'experiments.py: error: --depths: switches trains one network; '
                                 'give --num_layers')
    assert not (tmp_path / 'work').exists()
