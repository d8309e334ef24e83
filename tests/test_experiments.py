"""The figure experiments: end to end at a toy size, resume bookkeeping, the anatomy they draw."""

import csv
import json

import pytest
import tensorflow as tf

from conftest import error_lines, run_script, write_cifar
from v2 import anatomy, experiments, figures
from v2.errors import UserError
from v2.model import ModelConfig

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
TOY = ['--depths=8', '--seeds=1,2', '--num_iterations=4', '--record_every=2', '--batch_size=8',
       '--lr_values=0.1,0.01', '--lr_boundaries=2']


@pytest.fixture(scope='module')
def toy_run(tmp_path_factory):
    root = tmp_path_factory.mktemp('figure6')
    data_path = write_cifar(root / 'data')
    run = run_script('v2.experiments', 'figure6', '--data_path=%s' % data_path,
                     '--out=%s' % (root / 'files'), '--work_dir=%s' % (root / 'work'), *TOY)
    assert run.returncode == 0, run.stderr
    return root, run


def test_figure6_writes_every_point_the_table_and_both_figures(toy_run):
    root, run = toy_run
    with open(root / 'files' / 'figure6.csv') as f:
        rows = list(csv.DictReader(f))
    # 2 networks x 1 depth x 2 seeds x 2 recorded steps x (train, test)
    assert len(rows) == 16
    assert {(r['network'], r['seed'], r['step'], r['split']) for r in rows} == {
        (n, s, t, p) for n in ('plain', 'resnet') for s in ('1', '2') for t in ('2', '4')
        for p in ('train', 'test')}
    assert all(0.0 <= float(r['error']) <= 1.0 for r in rows)
    summary = json.loads((root / 'files' / 'figure6.json').read_text())
    assert summary['training_images'] == 80
    assert summary['recipe']['num_iterations'] == 4
    final = {(e['network'], e['depth']): e for e in summary['final']}
    assert set(final) == {('plain', 8), ('resnet', 8)}
    last_test = [float(r['error']) for r in rows
                 if (r['network'], r['split'], r['step']) == ('plain', 'test', '4')]
    assert final['plain', 8]['test']['per_seed'] == pytest.approx(last_test)
    assert 'final test error' in run.stdout
    pytest.importorskip('matplotlib', reason='drawing needs the optional matplotlib')
    for name in ('plain.png', 'resnet.png'):
        assert (root / 'files' / name).read_bytes()[:8] == PNG_MAGIC


def test_figure6_is_reproducible_and_a_finished_experiment_is_not_retrained(toy_run, tmp_path):
    root, _ = toy_run
    again = run_script('v2.experiments', 'figure6', '--data_path=%s' % (root / 'data'),
                       '--out=%s' % (tmp_path / 'files'), '--work_dir=%s' % (tmp_path / 'work'),
                       '--noplot', *TOY)
    assert again.returncode == 0, again.stderr
    assert ((tmp_path / 'files' / 'figure6.csv').read_text()
            == (root / 'files' / 'figure6.csv').read_text())
    resumed = run_script('v2.experiments', 'figure6', '--data_path=%s' % (root / 'data'),
                         '--out=%s' % (tmp_path / 'files2'),
                         '--work_dir=%s' % (tmp_path / 'work'), '--noplot', *TOY)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count('nothing to train') == 4
    assert ((tmp_path / 'files2' / 'figure6.csv').read_text()
            == (root / 'files' / 'figure6.csv').read_text())


def test_a_work_dir_of_another_recipe_is_refused_untouched(toy_run):
    root, _ = toy_run
    recipe = (root / 'work' / 'recipe.json').read_text()
    run = run_script('v2.experiments', 'figure6', '--data_path=%s' % (root / 'data'),
                     '--out=%s' % (root / 'other'), '--work_dir=%s' % (root / 'work'),
                     *TOY, '--weight_decay=0.01')
    assert run.returncode == 1
    assert error_lines(run.stderr) == [
        'experiments.py: error: --work_dir=%s holds runs made with another weight_decay; '
        'choose another --work_dir (nothing there was changed)' % (root / 'work')]
    assert (root / 'work' / 'recipe.json').read_text() == recipe
    assert not (root / 'other').exists()


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


def test_architecture_command_writes_the_json_and_the_png(tmp_path):
    run = run_script('v2.experiments', 'architecture', '--out=%s' % tmp_path)
    assert run.returncode == 0, run.stderr
    described = json.loads((tmp_path / 'architecture.json').read_text())
    assert described['name'] == 'ResNet-20' and len(described['units']) == 3
    pytest.importorskip('matplotlib', reason='drawing needs the optional matplotlib')
    assert (tmp_path / 'architecture.png').read_bytes()[:8] == PNG_MAGIC


def test_figures_refuse_a_csv_that_is_not_figure6_points(tmp_path):
    bad = tmp_path / 'other.csv'
    bad.write_text('a,b\n1,2\n')
    with pytest.raises(UserError, match='other.csv: not a figure6 CSV'):
        figures.read_points(str(bad))


@pytest.mark.parametrize('args, message', [
    ([], 'expected one command, figure6 or architecture'),
    (['figure6'], '--data_path: give the folder of the CIFAR-10 binary files'),
    (['figure6', '--data_path=/nonexistent/x'], '--data_path=/nonexistent/x: no such folder'),
])
def test_bad_commands_get_one_line(args, message):
    run = run_script('v2.experiments', *args)
    assert run.returncode == 1
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and message in lines[0], run.stderr


def test_a_depth_that_is_not_6n_plus_2_is_refused_before_training(tmp_path):
    data_path = write_cifar(tmp_path / 'data')
    run = run_script('v2.experiments', 'figure6', '--data_path=%s' % data_path,
                     '--work_dir=%s' % (tmp_path / 'work'), '--depths=21')
    assert run.returncode == 1
    assert error_lines(run.stderr) == [
        'experiments.py: error: --depths=21: 21 is not a CIFAR ResNet depth (6n+2: 8, 14, 20, '
        '32, 44, 56, 110, ...)']
    assert not (tmp_path / 'work').exists()
