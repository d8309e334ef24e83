"""run_trainer.py and run_evaluator.py as a user runs them: end to end, bad input, Ctrl-C."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import ROOT, error_lines, run_script, write_cifar

TINY_RUN = ['--num_layers=8', '--batch_size=8', '--log_per_iterations=2',
            '--lr_boundaries=3', '--lr_values=0.05,0.005']


def snapshot(folder):
    """Every file below folder with its bytes, to prove nothing was touched."""
    state = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, 'rb') as f:
                state[os.path.relpath(path, folder)] = f.read()
    return state


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny data set and a ResNet-8 trained on it for 4 steps, through the script."""
    root = tmp_path_factory.mktemp('trained')
    data = write_cifar(root / 'data')
    run = run_script('run_trainer.py', '--data_path=%s' % data, '--ckpt_path=%s' % (root / 'ckpt'),
                     '--num_iterations=4', *TINY_RUN)
    assert run.returncode == 0, run.stderr
    return root


def test_train_then_evaluate_end_to_end(trained):
    run = run_script('run_trainer.py', '--data_path=%s' % (trained / 'data'),
                     '--ckpt_path=%s' % (trained / 'ckpt'), '--num_iterations=4', *TINY_RUN)
    assert run.returncode == 0 and 'nothing to train' in run.stdout
    out_json = trained / 'eval.json'
    run = run_script('run_evaluator.py', '--path=%s' % (trained / 'data'),     # seed-era alias
                     '--ckpt_path=%s' % (trained / 'ckpt'), '--output_json=%s' % out_json)
    assert run.returncode == 0, run.stderr
    assert 'ResNet-8 on 24 test images' in run.stdout and 'per class' in run.stdout
    report = json.loads(out_json.read_text())
    assert report['checkpoints'][0]['step'] == 4
    assert report['checkpoints'][0]['num_examples'] == 24
    assert len(report['checkpoints'][0]['per_class_accuracy']) == 10


def test_training_output_shows_progress_and_writes_summaries(trained):
    assert os.listdir(trained / 'ckpt' / 'logs' / 'train')
    run = run_script('run_trainer.py', '--data_path=%s' % (trained / 'data'),
                     '--ckpt_path=%s' % (trained / 'more'), '--num_iterations=2', *TINY_RUN)
    assert run.returncode == 0, run.stderr
    progress = [line for line in run.stdout.splitlines() if line.startswith('step 2/2')]
    assert progress and all(word in progress[0] for word in ('loss', 'accuracy', 'lr', 'img/s',
                                                             'left'))


def test_dry_run_prints_the_architecture_and_writes_nothing(trained):
    run = run_script('run_trainer.py', '--data_path=%s' % (trained / 'data'), '--num_layers=20',
                     '--batch_size=8', '--ckpt_path=%s' % (trained / 'dry'), '--dry_run')
    assert run.returncode == 0, run.stderr
    assert 'trainable parameters: 269,722' in run.stdout and '8x8x64' in run.stdout
    assert not (trained / 'dry').exists()


def test_dry_run_of_a_wide_resnet_from_the_flags(trained):
    run = run_script('run_trainer.py', '--data_path=%s' % (trained / 'data'), '--batch_size=8',
                     '--model=wide_resnet', '--num_layers=28', '--widen_factor=10', '--dry_run')
    assert run.returncode == 0, run.stderr
    assert 'WRN-28-10, 10 classes, option B shortcuts' in run.stdout
    assert 'trainable parameters: 36,479,194' in run.stdout


def _damage(data, name, how):
    path = data / name
    if how == 'missing':
        path.unlink()
    elif how == 'empty':
        path.write_bytes(b'')
    elif how == 'truncated':
        path.write_bytes(path.read_bytes()[:-1000])
    elif how == 'label':
        raw = bytearray(path.read_bytes())
        raw[3 * 3073] = 12
        path.write_bytes(bytes(raw))


# (script, extra flags, damage to the data, exit status, what the one line must say)
BAD_INPUTS = {
    'no data folder': ('run_trainer.py', ['--data_path={root}/nowhere'], None, 1,
                       'no such folder; add --download to fetch it, or download the binary '
                       'version (cifar-10-binary.tar.gz)'),
    'data path is a file': ('run_trainer.py', ['--data_path={data}/test_batch.bin'], None, 1,
                            'is a file; it must be the folder'),
    'a batch file missing': ('run_trainer.py', [], ('data_batch_2.bin', 'missing'), 1,
                             'missing data_batch_2.bin'),
    'empty file': ('run_trainer.py', [], ('data_batch_4.bin', 'empty'), 1,
                   'data_batch_4.bin: the file is empty'),
    'truncated file': ('run_trainer.py', [], ('data_batch_1.bin', 'truncated'), 1,
                       'data_batch_1.bin: 48168 bytes is not a multiple of the 3073-byte record'),
    'label out of range': ('run_trainer.py', [], ('data_batch_5.bin', 'label'), 1,
                           'data_batch_5.bin: record 3 has label 12; labels must be 0-9'),
    'depth not 6n+2': ('run_trainer.py', ['--num_layers=21'], None, 1,
                       '--num_layers=21: the depth must be 6n+2'),
    'bottleneck depth not 9n+2': ('run_trainer.py', ['--num_layers=21', '--bottleneck'], None, 1,
                                  '--num_layers=21: a bottleneck ResNet has depth 9n+2'),
    'vgg of a depth VGG lacks': ('run_trainer.py', ['--model=vgg', '--num_layers=15'], None, 1,
                                 '--num_layers=15: VGG comes in depths 11, 13, 16, 19'),
    'bottleneck flag for vgg': ('run_trainer.py', ['--model=vgg', '--num_layers=11',
                                                   '--bottleneck'], None, 1,
                                '--bottleneck does not apply to --model=vgg'),
    'shortcut type for a plain net': ('run_trainer.py', ['--shortcut_type=B',
                                                         '--shortcut_connections=false'], None, 1,
                                      '--shortcut_type=B makes no sense with'),
    'coarse labels of CIFAR-10': ('run_trainer.py', ['--coarse_labels'], None, 1,
                                  '--coarse_labels applies to --dataset=cifar100 only'),
    'unknown model': ('run_trainer.py', ['--model=densenet'], None, 2,
                      'flag --model=densenet: value should be one of'),
    'missing CIFAR-100 files': ('run_trainer.py', ['--dataset=cifar100'], None, 1,
                                'missing train.bin; add --download to fetch it, or download '
                                'the binary version (cifar-100-binary.tar.gz)'),
    'zero batch': ('run_trainer.py', ['--batch_size=0'], None, 2, '--batch_size=0'),
    'negative batch': ('run_trainer.py', ['--batch_size=-5'], None, 2, '--batch_size=-5'),
    'batch larger than the data': ('run_trainer.py', ['--batch_size=500'], None, 1,
                                   '--batch_size=500 is larger than the 80 training images'),
    'boundaries out of order': ('run_trainer.py', ['--lr_boundaries=48000,32000',
                                                   '--lr_values=0.1,0.01,0.001'], None, 1,
                                '--lr_boundaries=48000,32000 must be positive and strictly'),
    'values do not fit boundaries': ('run_trainer.py', ['--lr_values=0.1'], None, 1,
                                     '--lr_values needs one value more than --lr_boundaries'),
    'values not numbers': ('run_trainer.py', ['--lr_values=0.1,fast,0.001'], None, 1,
                           '--lr_values=0.1,fast,0.001: expected a comma-separated list'),
    'unknown flag': ('run_trainer.py', ['--num_layer=20'], None, 2,
                     "Unknown command line flag 'num_layer'"),
    'other architecture on resume': ('run_trainer.py', ['--num_layers=20'], None, 1,
                                     'is a ResNet-8 checkpoint (num_layers=8), but the flags '
                                     'ask for ResNet-20 (num_layers=20)'),
    'checkpoint path is a file': ('run_trainer.py', ['--ckpt_path={ckpt}/checkpoint'], None, 1,
                                  'is a file; it must be a folder'),
    'evaluate a folder without checkpoints': ('run_evaluator.py', ['--ckpt_path={data}'], None, 1,
                                              'the folder holds no checkpoint'),
    'evaluate as another depth': ('run_evaluator.py', ['--num_layers=20'], None, 1,
                                  'but the flags ask for ResNet-20'),
    'evaluate a plain net from a residual checkpoint': (
        'run_evaluator.py', ['--shortcut_connections=false'], None, 1,
        'but the flags ask for plain-8 (shortcut_connections=False)'),
    'evaluate as another family': ('run_evaluator.py', ['--model=vgg', '--num_layers=11'], None,
                                   1, 'is a ResNet-8 checkpoint (model=resnet, num_layers=8'),
    'evaluate a missing checkpoint': ('run_evaluator.py', ['--ckpt_path={ckpt}/ckpt-99'], None, 1,
                                      'no such checkpoint or folder'),
    'evaluator without --ckpt_path': ('run_evaluator.py', ['--ckpt_path='], None, 1,
                                      '--ckpt_path=: no such checkpoint or folder'),
}


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_gets_one_line_and_nothing_is_overwritten(trained, tmp_path, case):
    script, extra, damage, status, message = BAD_INPUTS[case]
    data = tmp_path / 'data'
    shutil.copytree(trained / 'data', data)
    if damage:
        _damage(data, *damage)
    ckpt = tmp_path / 'ckpt'
    shutil.copytree(trained / 'ckpt', ckpt)
    before = snapshot(ckpt)
    flags = ['--data_path=%s' % data, '--ckpt_path=%s' % ckpt]
    if script == 'run_trainer.py':
        flags += ['--num_iterations=8'] + [f for f in TINY_RUN if not any(
            f.split('=')[0] == e.split('=')[0] for e in extra)]
    flags += [e.format(root=tmp_path, data=data, ckpt=ckpt) for e in extra]
    run = run_script(script, *flags)
    assert run.returncode == status, (run.stdout, run.stderr)
    assert 'Traceback' not in run.stderr
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and message in lines[0], run.stderr
    assert lines[0].startswith(script + ': error: ')
    assert snapshot(ckpt) == before


def test_corrupt_checkpoint_is_refused_in_one_line(trained, tmp_path):
    ckpt = tmp_path / 'ckpt'
    shutil.copytree(trained / 'ckpt', ckpt)
    for name in os.listdir(ckpt):
        if name.startswith('ckpt-4.data'):          # the latest
            (ckpt / name).write_bytes(b'garbage')
    run = run_script('run_evaluator.py', '--data_path=%s' % (trained / 'data'),
                     '--ckpt_path=%s' % ckpt)
    assert run.returncode == 1 and 'Traceback' not in run.stderr
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and 'ckpt-4' in lines[0], run.stderr


@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_the_run_resumes(trained, tmp_path, signum):
    ckpt = tmp_path / 'ckpt'
    args = [sys.executable, str(ROOT / 'run_trainer.py'), '--data_path=%s' % (trained / 'data'),
            '--ckpt_path=%s' % ckpt, '--num_iterations=100000', '--num_layers=8',
            '--batch_size=8', '--log_per_iterations=1000']
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        line = ''
        deadline = time.time() + 120
        while 'TensorBoard' not in line and time.time() < deadline:
            line = process.stdout.readline()
        time.sleep(3)                                   # some steps into the run
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, err
    assert '%s received' % signum.name in out and 'run the same command to resume' in out
    stopped = int(out.split('stopped at step ')[1].split(';')[0])
    assert 0 < stopped < 1000 and (ckpt / ('ckpt-%d.index' % stopped)).exists()
    run = run_script('run_trainer.py', '--data_path=%s' % (trained / 'data'),
                     '--ckpt_path=%s' % ckpt, '--num_iterations=%d' % (stopped + 2),
                     '--num_layers=8', '--batch_size=8', '--log_per_iterations=1000')
    assert run.returncode == 0, run.stderr
    assert 'resuming at step %d' % stopped in run.stdout
    assert (ckpt / ('ckpt-%d.index' % (stopped + 2))).exists()
