"""The two programs as a user runs them: flags, bad input, output. In this process (fast),
and as subprocesses for exit statuses, signals and kills (slow)."""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from conftest import ROOT, all_tensors, error_lines, run_script

from v2.cli import app, evaluator, flags, trainer
from v2.nets import model
from v2.runtime import checkpoint, devices
from v2.tools import flags as tool_flags

# What the run's first line says of grappler's layout optimizer on this machine's CPU.
LAYOUT_HERE = 'on' if devices.layout_optimizer_by_default(devices.describe([])) else 'off'
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


def train_in_process(*args):
    return app.call(trainer.main, ['run_trainer.py', *args], flags.TRAINER)


def evaluate_in_process(*args):
    return app.call(evaluator.main, ['run_evaluator.py', *args], flags.EVALUATOR)


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


# (program, extra flags, damage to the data, exit status, what the one line must say)
BAD_INPUTS = {
    'no data folder': ('trainer', ['--data_path={root}/nowhere'], None, 1,
                       '--data_path={root}/nowhere: no such folder; add --download to fetch it, '
                       'or download the binary version (cifar-10-binary.tar.gz)'),
    'data path is a file': ('trainer', ['--data_path={data}/test_batch.bin'], None, 1,
                            'is a file; it must be the folder'),
    'a batch file missing': ('trainer', [], ('data_batch_2.bin', 'missing'), 1,
                             'missing data_batch_2.bin'),
    'empty file': ('trainer', [], ('data_batch_4.bin', 'empty'), 1,
                   'data_batch_4.bin: the file is empty'),
    'truncated file': ('trainer', [], ('data_batch_1.bin', 'truncated'), 1,
                       'data_batch_1.bin: 48168 bytes is not a multiple of the 3073-byte record'),
    'label out of range': ('trainer', [], ('data_batch_5.bin', 'label'), 1,
                           'data_batch_5.bin: record 3 has label 12; labels must be 0-9'),
    'depth not 6n+2': ('trainer', ['--num_layers=21'], None, 1,
                       '--num_layers=21: the depth must be 6n+2'),
    'bottleneck depth not 9n+2': ('trainer', ['--num_layers=21', '--bottleneck'], None, 1,
                                  '--num_layers=21: a bottleneck ResNet has depth 9n+2'),
    'vgg of a depth VGG lacks': ('trainer', ['--model=vgg', '--num_layers=15'], None, 1,
                                 '--num_layers=15: VGG comes in depths 11, 13, 16, 19'),
    'bottleneck flag for vgg': ('trainer', ['--model=vgg', '--num_layers=11', '--bottleneck'],
                                None, 1, '--bottleneck does not apply to --model=vgg'),
    'shortcut type for a plain net': ('trainer', ['--shortcut_type=B',
                                                  '--shortcut_connections=false'], None, 1,
                                      '--shortcut_type=B makes no sense with'),
    'coarse labels of CIFAR-10': ('trainer', ['--coarse_labels'], None, 1,
                                  '--coarse_labels applies to --dataset=cifar100 only'),
    'unknown model': ('trainer', ['--model=densenet'], None, 2,
                      'flag --model=densenet: value should be one of'),
    'missing CIFAR-100 files': ('trainer', ['--dataset=cifar100'], None, 1,
                                'missing train.bin; add --download to fetch it, or download '
                                'the binary version (cifar-100-binary.tar.gz)'),
    'zero batch': ('trainer', ['--batch_size=0'], None, 2, '--batch_size=0'),
    'batch larger than the data': ('trainer', ['--batch_size=500'], None, 1,
                                   '--batch_size=500 is larger than the 80 training images'),
    'boundaries out of order': ('trainer', ['--lr_boundaries=48000,32000',
                                            '--lr_values=0.1,0.01,0.001'], None, 1,
                                '--lr_boundaries=48000,32000 must be positive and strictly'),
    'values do not fit boundaries': ('trainer', ['--lr_values=0.1'], None, 1,
                                     '--lr_values needs one value more than --lr_boundaries'),
    'values not numbers': ('trainer', ['--lr_values=0.1,fast,0.001'], None, 1,
                           '--lr_values=0.1,fast,0.001: expected a comma-separated list'),
    'save cadence not understood': ('trainer', ['--save_every=soon'], None, 1,
                                    '--save_every=soon: expected a number of steps'),
    'unknown flag': ('trainer', ['--num_layer=20'], None, 2,
                     "Unknown command line flag 'num_layer'"),
    'an evaluator flag given to the trainer': ('trainer', ['--tta'], None, 2,
                                               '--tta is not a flag of run_trainer.py'),
    'other architecture on resume': ('trainer', ['--num_layers=20'], None, 1,
                                     'is a ResNet-8 checkpoint (num_layers=8), but ResNet-20 '
                                     '(num_layers=20) was asked for'),
    'checkpoint path is a file': ('trainer', ['--ckpt_path={ckpt}/checkpoint'], None, 1,
                                  '--ckpt_path={ckpt}/checkpoint is a file; it must be a folder'),
    'a split changed on resume': ('trainer', ['--validation_split=8'], None, 1,
                                  '--validation_split=8, but the run was started with 0'),
    'evaluate a folder without checkpoints': ('evaluator', ['--ckpt_path={data}'], None, 1,
                                              'the folder holds no checkpoint'),
    'evaluate as another depth': ('evaluator', ['--num_layers=20'], None, 1,
                                  'but ResNet-20 (num_layers=20) was asked for'),
    'evaluate a plain net from a residual checkpoint': (
        'evaluator', ['--shortcut_connections=false'], None, 1,
        'but plain-8 (shortcut_connections=False) was asked for'),
    'evaluate as another family': ('evaluator', ['--model=vgg', '--num_layers=11'], None, 1,
                                   'is a ResNet-8 checkpoint (model=resnet, num_layers=8'),
    'evaluate a missing checkpoint': ('evaluator', ['--ckpt_path={ckpt}/ckpt-99'], None, 1,
                                      'no such checkpoint or folder'),
    'evaluator with an empty --ckpt_path': ('evaluator', ['--ckpt_path='], None, 1,
                                            '--ckpt_path=: no such checkpoint or folder'),
    'a trainer flag given to the evaluator': ('evaluator', ['--batch_size=3'], None, 2,
                                              '--batch_size is not a flag of run_evaluator.py'),
    'tflite without a SavedModel': ('evaluator', ['--tflite=int8'], None, 1,
                                    '--tflite needs --export_dir'),
    'temperature scaling without a validation split': (
        'evaluator', ['--temperature_scaling'], None, 1,
        'comes from a run that held out no validation images; the temperature is fitted on '
        'them, never on the test set (train with --validation_split=N)'),
    'reliability diagram into a missing folder': (
        'evaluator', ['--reliability_png={root}/nowhere/r.png'], None, 1,
        '--reliability_png={root}/nowhere/r.png: the folder {root}/nowhere does not exist'),
}


def _case(case, trained, session_data, tmp_path):
    program, extra, damage, status, message = BAD_INPUTS[case]
    data = tmp_path / 'data'
    shutil.copytree(session_data, data)
    if damage:
        _damage(data, *damage)
    ckpt = tmp_path / 'ckpt'
    shutil.copytree(trained / 'ckpt', ckpt)
    args = ['--data_path=%s' % data, '--ckpt_path=%s' % ckpt]
    if program == 'trainer':
        args += ['--num_iterations=8'] + [f for f in TINY_RUN if not any(
            f.split('=')[0] == e.split('=')[0] for e in extra)]
    args += [e.format(root=tmp_path, data=data, ckpt=ckpt) for e in extra]
    script = 'run_%s.py' % program
    expected = ('%s: error: ' % script, message.format(root=tmp_path, data=data, ckpt=ckpt))
    return script, args, status, expected, ckpt


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_gets_one_line_and_nothing_is_overwritten(trained, session_data, tmp_path,
                                                            case):
    script, args, status, (prefix, message), ckpt = _case(case, trained, session_data, tmp_path)
    before = snapshot(ckpt)
    call = train_in_process if script == 'run_trainer.py' else evaluate_in_process
    got, line = call(*args)
    assert got == status, line
    assert line.startswith(prefix) and message in line, line
    assert '\n' not in line
    assert snapshot(ckpt) == before


@pytest.mark.parametrize('case', ['label out of range',
                                  pytest.param('unknown flag', marks=pytest.mark.slow)])
def test_a_bad_input_ends_the_process_with_one_line_and_its_status(trained, session_data,
                                                                   tmp_path, case):
    script, args, status, (prefix, message), ckpt = _case(case, trained, session_data, tmp_path)
    run = run_script(script, *args)
    assert run.returncode == status, run.stderr
    assert 'Traceback' not in run.stderr
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and lines[0].startswith(prefix) and message in lines[0], run.stderr


def test_the_trainers_and_the_evaluators_flags_load_in_one_process(trained, session_data):
    args = ['--data_path=%s' % session_data, '--ckpt_path=%s' % (trained / 'ckpt')]
    flags.FLAGS.unparse_flags()
    app.parse(['run_trainer.py', *args, '--num_layers=20', '--nesterov'], flags.TRAINER)
    assert flags.model_config().describe() == 'ResNet-20' and flags.recipe().nesterov
    flags.FLAGS.unparse_flags()
    app.parse(['run_evaluator.py', *args, '--tta'], flags.EVALUATOR)
    assert flags.explicit_architecture() == {} and flags.FLAGS.tta
    flags.FLAGS.unparse_flags()


def test_train_then_evaluate_in_process(session_data, tmp_path, capsys):
    ckpt = tmp_path / 'ckpt'
    status, line = train_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt,
                                    '--num_iterations=4', *TINY_RUN)
    assert status == 0, line
    out = capsys.readouterr().out
    progress = [line for line in out.splitlines() if line.startswith('step 4/4')]
    assert progress and all(word in progress[0]
                            for word in ('loss', 'accuracy', 'lr', 'img/s', 'left'))
    first = out.splitlines()[0]          # ResNet-8's parameters, counted by hand: 75,290
    assert first.startswith('ResNet-8: 75,290 trainable parameters; 80 training images in %s, '
                            'batch 8; one device: CPU' % session_data)
    assert first.endswith('; float32, XLA off, layout optimizer %s, batches prepared on the '
                          'host; starting at step 0' % LAYOUT_HERE)
    status, line = train_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt,
                                    '--num_iterations=4', *TINY_RUN)
    assert status == 0 and 'nothing to train' in capsys.readouterr().out
    out_json = tmp_path / 'eval.json'
    status, line = evaluate_in_process('--path=%s' % session_data,           # seed-era alias
                                       '--ckpt_path=%s' % ckpt, '--output_json=%s' % out_json)
    assert status == 0, line
    out = capsys.readouterr().out
    assert 'ResNet-8 on 24 test images' in out and 'per class' in out
    report = json.loads(out_json.read_text())
    assert report['checkpoints'][0]['step'] == 4 and report['checkpoints'][0]['num_examples'] == 24


def test_dry_run_prints_the_architecture_and_writes_nothing(session_data, tmp_path, capsys):
    status, line = train_in_process('--data_path=%s' % session_data, '--num_layers=20',
                                    '--batch_size=8', '--ckpt_path=%s' % (tmp_path / 'dry'),
                                    '--dry_run')
    assert status == 0, line
    out = capsys.readouterr().out
    assert 'trainable parameters: 269,722' in out and '8x8x64' in out
    assert 'batches of 8x32x32x3' in out and not (tmp_path / 'dry').exists()
    status, line = train_in_process('--data_path=%s' % session_data, '--batch_size=8',
                                    '--model=wide_resnet', '--num_layers=28',
                                    '--widen_factor=10', '--dry_run')
    assert status == 0, line
    out = capsys.readouterr().out
    assert 'WRN-28-10, 10 classes, option B shortcuts' in out
    assert 'trainable parameters: 36,479,194' in out


def test_a_dry_run_says_first_what_would_run(session_data, tmp_path, capsys):
    status, line = train_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % (
        tmp_path / 'dry'), *TINY_RUN, '--dry_run')
    assert status == 0, line
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith('ResNet-8: 75,290 trainable parameters; 80 training images in ')
    assert first.endswith('; one device: %s; float32, XLA off, layout optimizer %s, batches '
                          'prepared on the host; dry run: would start at step 0'
                          % (devices.describe([])[0], LAYOUT_HERE))
    status, line = train_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % (
        tmp_path / 'dry'), *TINY_RUN, '--dry_run', '--prepare_batches=device',
        '--jit_compile')
    assert status == 0, line
    assert ('float32, XLA on, layout optimizer %s, batches prepared on the device' % LAYOUT_HERE
            in capsys.readouterr().out)


def test_a_dry_run_of_a_resume_names_the_checkpoint(trained, session_data, capsys):
    status, line = train_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % (
        trained / 'ckpt'), *TINY_RUN, '--dry_run')
    assert status == 0, line
    assert capsys.readouterr().out.splitlines()[0].endswith(
        'dry run: would resume at step 6 from %s' % (trained / 'ckpt' / 'ckpt-6'))
    status, line = train_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % (
        trained / 'ckpt'), *TINY_RUN[1:], '--num_layers=20', '--dry_run')
    assert status == 1 and 'but ResNet-20 (num_layers=20) was asked for' in line


# A dry run refuses, in one line, what a real run refuses before its first step.
DRY_RUN_REFUSALS = {
    'a device name TensorFlow does not print': (
        ['--devices=cuda:0'], '--devices=cuda:0: not a device name'),
    'two GPUs on a machine without one': (
        ['--devices=/gpu:0,/gpu:1', '--distribution_strategy=mirrored'],
        '--devices=/gpu:0,/gpu:1: no device /gpu:0 here: TensorFlow sees no GPU'),
    'two devices without mirrored': (
        ['--devices=/cpu:0,/cpu:1'], 'one device without --distribution_strategy=mirrored'),
    'a batch that does not divide by the replicas': (
        ['--distribution_strategy=mirrored', '--cpu_devices=2', '--batch_size=7'],
        '--batch_size=7 does not divide by the 2 replicas'),
    'XLA with pooled statistics over replicas': (
        ['--distribution_strategy=mirrored', '--cpu_devices=2', '--sync_batch_norm',
         '--jit_compile'], '--jit_compile with --sync_batch_norm over 2 replicas'),
    'batches on the host of a mirrored run': (
        ['--distribution_strategy=mirrored', '--cpu_devices=2', '--prepare_batches=host'],
        '--prepare_batches=host: only one-device runs'),
    'a checkpoint folder that is a file': (
        ['--ckpt_path={data}/test_batch.bin'], 'test_batch.bin is a file; it must be a folder'),
}


@pytest.mark.parametrize('case', sorted(DRY_RUN_REFUSALS))
def test_a_dry_run_refuses_what_a_real_run_refuses(session_data, tmp_path, case):
    extra, message = DRY_RUN_REFUSALS[case]
    extra = [e.format(data=session_data) for e in extra]
    before = snapshot(session_data)
    for dry in (['--dry_run'], []):
        status, line = train_in_process('--data_path=%s' % session_data, '--ckpt_path=%s' % (
            tmp_path / 'ckpt'), *TINY_RUN, *extra, *dry)
        assert status == 1 and message in line, (dry, line)
    assert not (tmp_path / 'ckpt').exists() and snapshot(session_data) == before


def test_importing_the_library_changes_nothing_and_defines_no_flag():
    code = ('import os, sys; before = os.fstat(2).st_ino; import v2.nets.model, v2.training.loop, '
            'v2.evaluation.evaluate; from absl import flags; '
            'assert os.fstat(2).st_ino == before; '
            'ours = [n for n in flags.FLAGS if n in ("data_path", "num_layers", "ckpt_path")]; '
            'assert not ours, ours; assert "TF_CPP_MIN_LOG_LEVEL" not in os.environ; print("ok")')
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    run = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == 'ok', run.stderr


# --- the slow tier: subprocesses, signals, kills --------------------------------------------

@pytest.mark.slow
def test_train_then_evaluate_end_to_end_as_scripts(session_data, tmp_path):
    ckpt = tmp_path / 'ckpt'
    run = run_script('run_trainer.py', '--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt,
                     '--num_iterations=4', *TINY_RUN)
    assert run.returncode == 0, run.stderr
    assert not error_lines(run.stderr) and 'step 4/4' in run.stdout
    run = run_script('run_evaluator.py', '--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt)
    assert run.returncode == 0 and 'ResNet-8 on 24 test images' in run.stdout, run.stderr


def _trainer(*args):
    env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
    return subprocess.Popen([sys.executable, str(ROOT / 'run_trainer.py'), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
@pytest.mark.parametrize('signum', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_the_run_resumes(session_data, tmp_path,
                                                                   signum):
    ckpt = tmp_path / 'ckpt'
    args = ['--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt, '--num_layers=8',
            '--batch_size=8', '--log_per_iterations=1000']
    process = _trainer(*args, '--num_iterations=100000')
    try:
        line, deadline = '', time.time() + 120
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
    run = run_script('run_trainer.py', *args, '--num_iterations=%d' % (stopped + 2))
    assert run.returncode == 0 and 'resuming at step %d' % stopped in run.stdout, run.stderr
    assert (ckpt / ('ckpt-%d.index' % (stopped + 2))).exists()


def _wait_for(path, process, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, 'no %s after %d s' % (path, timeout)
        time.sleep(0.05)


@pytest.mark.slow
def test_a_killed_process_resumes_to_the_same_weights_bit_for_bit(session_data, tmp_path):
    args = ['--data_path=%s' % session_data, '--num_iterations=600', '--log_per_iterations=50',
            '--save_every=200', '--deterministic', *TINY_RUN[:2], '--lr_values=0.05,0.005',
            '--lr_boundaries=400']
    straight = run_script('run_trainer.py', '--ckpt_path=%s' % (tmp_path / 'straight'), *args)
    assert straight.returncode == 0, straight.stderr
    killed = tmp_path / 'killed'
    process = _trainer('--ckpt_path=%s' % killed, *args)
    try:
        _wait_for(killed / 'ckpt-200.index', process)
        time.sleep(0.5)                                   # between two checkpoints
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        process.kill()
    assert not (killed / 'ckpt-600.index').exists()
    resumed = run_script('run_trainer.py', '--ckpt_path=%s' % killed, *args)
    assert resumed.returncode == 0 and 'resuming at step' in resumed.stdout, resumed.stderr
    a = all_tensors(tmp_path / 'straight' / 'ckpt-600')
    b = all_tensors(killed / 'ckpt-600')
    for tensors in (a, b):
        tensors.pop('save_counter/.ATTRIBUTES/VARIABLE_VALUE')
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.slow
def test_killing_during_saves_never_breaks_the_last_checkpoint(session_data, tmp_path):
    folder = tmp_path / 'ckpt'
    rng = random.Random(0)
    args = ['--data_path=%s' % session_data, '--ckpt_path=%s' % folder,
            '--num_iterations=1000000', '--log_per_iterations=1', '--save_every=1',
            '--max_to_keep=2', *TINY_RUN[:2]]
    for _ in range(4):
        process = _trainer(*args)
        try:
            _wait_for(folder / 'checkpoint', process)
            time.sleep(rng.uniform(0.5, 2.0))             # saving every step: most kills hit one
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=60)
        finally:
            process.kill()
        latest = tf.train.latest_checkpoint(str(folder))
        saved = checkpoint.Saved(latest)                  # the index names a whole checkpoint
        net = model.build(saved.config)
        checkpoint.restore(checkpoint.make(net, tf.Variable(saved.pixel_mean)), latest)
    assert saved.step > 1


@pytest.mark.slow
def test_corrupt_checkpoint_is_refused_in_one_line(trained, session_data, tmp_path):
    ckpt = tmp_path / 'ckpt'
    shutil.copytree(trained / 'ckpt', ckpt)
    for name in os.listdir(ckpt):
        if name.startswith('ckpt-6.data'):          # the latest
            (ckpt / name).write_bytes(b'garbage')
    run = run_script('run_evaluator.py', '--data_path=%s' % session_data, '--ckpt_path=%s' % ckpt)
    assert run.returncode == 1 and 'Traceback' not in run.stderr
    lines = error_lines(run.stderr)
    assert len(lines) == 1 and 'ckpt-6' in lines[0], run.stderr


# --- help: each program's own flags ----------------------------------------------------------

def _programs():
    from v2.cli import convert
    from v2.tools import benchmark, catalog, curves, experiments, figures, gpu_report, step_variants
    # (program, its main, its own flags, flags its --help must show: what the docs name)
    return {
        'run_trainer.py': (trainer.main, flags.TRAINER,
                           ['num_layers', 'data_path', 'ckpt_path', 'precision', 'batch_size',
                            'devices', 'dry_run']),
        'run_evaluator.py': (evaluator.main, flags.EVALUATOR,
                             ['ckpt_path', 'data_path', 'export_dir', 'tflite', 'tta']),
        'convert.py': (convert.main, flags.CONVERT, ['image_folder', 'data_path']),
        'benchmark.py': (benchmark.main, tool_flags.BENCHMARK,
                         ['num_layers', 'precision', 'windows', 'keras']),
        'step_variants.py': (step_variants.main, tool_flags.STEP_VARIANTS, ['variants', 'rounds']),
        'experiments.py': (experiments.main, tool_flags.EXPERIMENTS,
                           ['depths', 'seeds', 'out', 'work_dir', 'num_layers']),
        'figures.py': (figures.main, tool_flags.FIGURES, ['out']),
        'curves.py': (curves.main, tool_flags.CURVES, ['png', 'title']),
        'gpu_report.py': (gpu_report.main, tool_flags.GPU_REPORT, ['budget_minutes', 'out']),
        'catalog.py': (catalog.main, tool_flags.CATALOG, []),
    }


def _listed(text):
    """The flags a help text lists: '  --name: ...', '  --[no]name: ...', '  -v,--name: ...'."""
    return {m.group(1) for m in re.finditer(r'^  (?:-\w,)?--(?:\[no\])?(\w+):', text,
                                            re.MULTILINE)}


@pytest.mark.parametrize('program', sorted(_programs()))
def test_help_lists_the_programs_own_flags_grouped_and_no_other(program, capsys):
    main, own, shown = _programs()[program]
    status, line = app.call(main, [program, '--help'], own)
    text = capsys.readouterr().out
    assert status == 0 and line == ''
    listed = _listed(text)
    assert set(shown) <= listed, text
    assert listed == set(own)                       # the rest of ALL are other programs'
    assert '--flagfile' in text and '--helpfull' in text
    assert app.call(main, [program, '--helpshort'], own)[0] == 0
    assert _listed(capsys.readouterr().out) == listed


def test_the_trainers_help_is_in_the_groups_a_user_looks_for(capsys):
    app.call(trainer.main, ['run_trainer.py', '--help'], flags.TRAINER)
    text = capsys.readouterr().out
    titles = re.findall(r'^(\S[^\n]*):$', text, re.MULTILINE)
    assert titles == ['flags', 'data and network', 'recipe (stored in every checkpoint)',
                      'run and devices', 'output']
    group = text.split('\nrun and devices:\n')[1].split('\noutput:\n')
    assert '--precision' in group[0] and '--devices' in group[0] and '--ckpt_path' in group[1]


def test_helpfull_adds_absls_flags_only(capsys):
    status, _ = app.call(evaluator.main, ['run_evaluator.py', '--helpfull'], flags.EVALUATOR)
    text = capsys.readouterr().out
    listed = _listed(text)
    assert status == 0 and {'verbosity', 'flagfile', 'only_check_args'} <= listed
    assert set(flags.EVALUATOR) <= listed
    assert not listed & (set(flags.ALL) - set(flags.EVALUATOR))   # e.g. --num_iterations


def test_a_foreign_flag_points_at_help():
    from v2.tools import curves
    status, line = app.call(curves.main, ['curves.py', '--num_iterations=3', 'run'],
                            tool_flags.CURVES)
    assert (status, line) == (2, 'curves.py: error: --num_iterations is not a flag of curves.py '
                                 '(see --help)')


def test_a_tools_help_puts_its_groups_where_a_user_looks_for_them(capsys):
    from v2.tools import experiments
    app.call(experiments.main, ['experiments.py', '--help'], tool_flags.EXPERIMENTS)
    titles = re.findall(r'^(\S[^\n]*):$', capsys.readouterr().out, re.MULTILINE)
    assert titles == ['flags', 'data and network', 'recipe (stored in every checkpoint)',
                      'run and devices', 'the grid of runs', 'output']


def test_every_flag_has_one_help_group():
    grouped = [name for _, names in flags.HELP_GROUPS for name in names]
    assert sorted(grouped) == sorted(flags.ALL)
