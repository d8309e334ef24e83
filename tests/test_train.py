"""The training loop in this process: resume, saves, windows, stops, splits, non-finite losses."""

import dataclasses
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
from conftest import all_tensors, quiet, tiny_options, tiny_recipe

from v2.data import cifar
from v2.errors import UserError
from v2.nets.model import ModelConfig
from v2.runtime import checkpoint
from v2.training import actions, inputs, loop, preflight
from v2.training.options import RunOptions
from v2.training.schedule import Schedule
from v2.training.step import WINDOW, WindowReader

TINY = ModelConfig(num_layers=8)


def test_train_checkpoints_summarises_and_resumes_to_the_total(trained, trained_copy,
                                                              session_data):
    folders = sorted(checkpoint.find_all(str(trained / 'ckpt')))
    assert [p.rsplit('-', 1)[1] for p in folders] == ['3', '6']
    assert os.listdir(trained / 'logs' / 'train')
    reader = tf.train.load_checkpoint(folders[-1])
    assert any(k.startswith('optimizer/accumulators') for k in reader.get_variable_to_shape_map())
    lines = []
    result = loop.train(TINY, tiny_recipe(num_iterations=9), tiny_options(trained_copy),
                        str(session_data), out=lines.append)
    assert any('resuming at step 6 from' in line for line in lines)
    assert result.step == 9 and checkpoint.Saved(result.checkpoint).step == 9
    assert any(line.startswith('step 9/9  loss') for line in lines)


def _killed_at(step):
    def on_step(current):
        if current == step:
            raise KeyboardInterrupt('killed')
    return on_step


MIXED = dict(mixup_alpha=1.0, cutmix_alpha=1.0, cutmix_prob=0.5)


@pytest.mark.parametrize('steps_per_call, changes', [
    (1, {}), pytest.param(2, {}, marks=pytest.mark.slow), (1, MIXED)])
def test_an_interrupted_run_resumes_to_the_same_weights_bit_for_bit(session_data, tmp_path,
                                                                     steps_per_call, changes):
    """With mixup and CutMix too: a resumed run draws the same mixtures (seed, step)."""
    recipe = tiny_recipe(num_iterations=8, deterministic=True, **changes)
    options = dict(log_per_iterations=2, save_every=2, steps_per_call=steps_per_call)
    straight = loop.train(TINY, recipe, tiny_options(tmp_path / 'a', **options),
                          str(session_data), out=quiet)
    with pytest.raises(KeyboardInterrupt):        # killed after step 6, before its save
        loop.train(TINY, recipe, tiny_options(tmp_path / 'b', **options), str(session_data),
                   out=quiet, on_step=_killed_at(6))
    lines = []
    resumed = loop.train(TINY, recipe, tiny_options(tmp_path / 'b', **options),
                         str(session_data), out=lines.append)
    assert any('resuming at step 4' in line for line in lines)
    a, b = all_tensors(straight.checkpoint), all_tensors(resumed.checkpoint)
    assert a.keys() == b.keys() and any(k.startswith('optimizer/') for k in a)
    a.pop('save_counter/.ATTRIBUTES/VARIABLE_VALUE')        # how many saves, not the state
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.mark.parametrize('changes', [{}, dict(cutout=4), dict(mixup_alpha=0.4),
                                     dict(cutmix_alpha=1.0), MIXED])
def test_batches_prepared_on_the_host_train_the_weights_the_device_path_does(session_data,
                                                                             tmp_path, changes):
    recipe = tiny_recipe(num_iterations=4, deterministic=True, **changes)
    results = [loop.train(TINY, recipe, tiny_options(tmp_path / where, prepare_batches=where),
                          str(session_data), out=quiet).checkpoint
               for where in ('host', 'device')]
    host, device = all_tensors(results[0]), all_tensors(results[1])
    for key in host:
        np.testing.assert_array_equal(host[key], device[key], err_msg=key)


def test_auto_prepares_batches_on_the_host_only_on_one_cpu():
    from v2.runtime.distribution import Cluster
    one, mirrored = (Cluster(tf.distribute.get_strategy(), name)
                     for name in ('default', 'mirrored'))
    assert inputs.prepares_on_host('auto', False, one)
    assert not inputs.prepares_on_host('auto', True, one)
    assert not inputs.prepares_on_host('auto', False, mirrored)
    assert not inputs.prepares_on_host('device', False, one)
    assert inputs.prepares_on_host('host', True, one)
    with pytest.raises(UserError, match='prepare_batches=host: only one-device runs'):
        inputs.prepares_on_host('host', False, mirrored)


def test_a_one_cpu_run_prepares_its_batches_on_the_host(session_data, tmp_path, monkeypatch):
    seen = []
    prepare_where = inputs.training_batches

    def spy(data, recipe, start, on_host, mean, num_classes):
        batches = prepare_where(data, recipe, start, on_host, mean, num_classes)
        seen.append((on_host, batches.element_spec[0].dtype))
        return batches
    monkeypatch.setattr(inputs, 'training_batches', spy)
    loop.train(TINY, tiny_recipe(num_iterations=2), tiny_options(tmp_path), str(session_data),
               out=quiet)
    assert seen == [(True, tf.float32)]


def test_saves_come_at_their_cadence_at_the_end_and_on_a_stop_request(session_data, tmp_path):
    result = loop.train(TINY, tiny_recipe(num_iterations=10),
                        tiny_options(tmp_path, log_per_iterations=2, save_every=4,
                                     max_to_keep=10), str(session_data), out=quiet)
    saved = sorted(int(p.rsplit('-', 1)[1]) for p in checkpoint.find_all(str(tmp_path / 'ckpt')))
    assert saved == [4, 8, 10] and result.checkpoint.endswith('ckpt-10')

    def request_stop(step):
        if step == 13:
            os.kill(os.getpid(), signal.SIGTERM)
    lines = []
    result = loop.train(TINY, tiny_recipe(num_iterations=100),
                        tiny_options(tmp_path, log_per_iterations=5, save_every=1000,
                                     max_to_keep=10), str(session_data), out=lines.append,
                        on_step=request_stop)
    assert result.stopped_by == signal.SIGTERM and result.step == 13
    assert result.checkpoint.endswith('ckpt-13')
    assert any(line.startswith('step 13/100') for line in lines)       # the partial window
    assert 'stopped at step 13' in lines[-1]


def test_saving_by_time(session_data, tmp_path, monkeypatch):
    clock = iter(range(0, 10000, 40))                          # 40 "seconds" a reading
    monkeypatch.setattr(actions.time, 'monotonic', lambda: next(clock))
    loop.train(TINY, tiny_recipe(num_iterations=6),
               tiny_options(tmp_path, log_per_iterations=1, save_every=10 ** 9,
                            save_every_secs=100, max_to_keep=10), str(session_data), out=quiet)
    saved = sorted(int(p.rsplit('-', 1)[1]) for p in checkpoint.find_all(str(tmp_path / 'ckpt')))
    assert len(saved) >= 2 and saved[-1] == 6 and saved[0] < 6


def test_each_window_is_read_from_the_device_once(session_data, tmp_path, monkeypatch):
    reads = []
    real_read = WindowReader.__call__
    monkeypatch.setattr(WindowReader, '__call__',
                        lambda reader, *requests: reads.append(1) or real_read(reader, *requests))
    records = []
    loop.train(TINY, tiny_recipe(num_iterations=9),
               tiny_options(tmp_path, log_per_iterations=3, steps_per_call=2),
               str(session_data), out=quiet, on_record=lambda *r: records.append(r))
    assert len(reads) == 3 and [step for step, _, _ in records] == [3, 6, 9]


def test_the_logged_rate_is_the_schedules_at_every_step(session_data, tmp_path):
    rates = {}
    schedule = Schedule(boundaries=(2, 4), values=(0.1, 0.01, 0.001), warmup_iterations=1,
                        warmup_lr=0.05)
    loop.train(TINY, tiny_recipe(schedule=schedule),
               tiny_options(tmp_path, log_per_iterations=1), str(session_data), out=quiet,
               on_record=lambda step, split, m: rates.update({step: m['learning_rate']}))
    # The update of step s (1-based) uses the schedule at s - 1.
    assert rates == pytest.approx({1: 0.05, 2: 0.1, 3: 0.01, 4: 0.01, 5: 0.001, 6: 0.001})


def test_a_changed_recipe_is_said_in_one_line_and_a_changed_split_refused(trained_copy,
                                                                          session_data):
    lines = []
    loop.train(TINY, tiny_recipe(num_iterations=7, weight_decay=5e-4),
               tiny_options(trained_copy), str(session_data), out=lines.append)
    notes = [line for line in lines if line.startswith('note:') and 'checkpoint' in line]
    assert len(notes) == 1 and 'weight_decay 0.0001 -> 0.0005' in notes[0]
    before = sorted(os.listdir(trained_copy / 'ckpt'))
    with pytest.raises(UserError, match='validation_split=8, but the run was started with 0'):
        loop.train(TINY, tiny_recipe(num_iterations=9, validation_split=8),
                   tiny_options(trained_copy), str(session_data), out=quiet)
    assert sorted(os.listdir(trained_copy / 'ckpt')) == before


def test_resume_with_another_architecture_is_refused_and_nothing_is_touched(trained_copy,
                                                                            session_data):
    before = {n: (trained_copy / 'ckpt' / n).read_bytes()
              for n in os.listdir(trained_copy / 'ckpt') if (trained_copy / 'ckpt' / n).is_file()}
    with pytest.raises(UserError, match=r'ResNet-8 checkpoint .* but plain-8 .* was asked for'):
        loop.train(ModelConfig(num_layers=8, shortcut_connections=False),
                   tiny_recipe(num_iterations=9), tiny_options(trained_copy), str(session_data),
                   out=quiet)
    after = {n: (trained_copy / 'ckpt' / n).read_bytes()
             for n in os.listdir(trained_copy / 'ckpt') if (trained_copy / 'ckpt' / n).is_file()}
    assert after == before


def test_a_checkpoint_from_before_the_symmetric_padding_trains_on_with_its_own(session_data,
                                                                                 tmp_path):
    old = dataclasses.replace(TINY, strided_padding='tf_same')
    loop.train(old, tiny_recipe(num_iterations=2), tiny_options(tmp_path), str(session_data),
               out=quiet)
    lines = []
    result = loop.train(TINY, tiny_recipe(num_iterations=4), tiny_options(tmp_path),
                        str(session_data), out=lines.append)
    assert any('strided_padding=tf_same' in line for line in lines)
    assert checkpoint.Saved(result.checkpoint).config.strided_padding == 'tf_same'


def test_a_non_finite_loss_stops_without_writing_a_checkpoint(session_data, tmp_path):
    bad = tiny_recipe(schedule=Schedule(boundaries=(), values=(1e30,)))
    with pytest.raises(UserError,
                       match=r'the loss or its gradients became non-finite at step \d') as caught:
        loop.train(TINY, bad, tiny_options(tmp_path), str(session_data), out=quiet)
    assert '--nan_policy=skip_step' in caught.value.flag_message()
    assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')) is None


def test_a_validation_split_is_held_out_evaluated_and_kept_out_of_the_mean(session_data,
                                                                           tmp_path):
    lines, records = [], []
    result = loop.train(TINY, tiny_recipe(num_iterations=4, validation_split=16),
                        tiny_options(tmp_path, log_per_iterations=2, eval_every=2),
                        str(session_data), out=lines.append,
                        on_record=lambda *r: records.append(r))
    images, _ = cifar.load_split(str(session_data), cifar.CIFAR10, 'train')
    np.testing.assert_allclose(checkpoint.Saved(result.checkpoint).pixel_mean,
                               images.numpy()[:64].mean(axis=0), rtol=1e-6)
    assert '64 training images' in lines[0]
    assert [(s, split) for s, split, _ in records] == [
        (2, 'train'), (2, 'validation'), (4, 'train'), (4, 'validation')]
    assert any(line.startswith('step 4: validation cross-entropy') for line in lines)
    assert os.listdir(tmp_path / 'logs' / 'validation')


def test_a_validation_split_alone_only_holds_images_out(session_data, tmp_path):
    result = loop.train(TINY, tiny_recipe(num_iterations=2, validation_split=16),
                        tiny_options(tmp_path), str(session_data), out=quiet)
    assert result.step == 2 and not os.path.exists(tmp_path / 'logs' / 'validation')


def test_a_run_resumed_with_weight_averages_newly_on_starts_them_from_the_weights(
        trained_copy, session_data):
    lines = []
    result = loop.train(TINY, tiny_recipe(num_iterations=7, ema_decay=0.9),
                        tiny_options(trained_copy), str(session_data), out=lines.append)
    assert checkpoint.Saved(result.checkpoint).has_ema
    assert any('ema_decay 0.0 -> 0.9' in line for line in lines)


def test_a_disk_too_full_for_the_checkpoints_is_refused_before_training(session_data, tmp_path,
                                                                       monkeypatch):
    usage = preflight.shutil.disk_usage(str(tmp_path))
    monkeypatch.setattr(preflight.shutil, 'disk_usage', lambda path: usage._replace(free=100_000))
    with pytest.raises(UserError, match=r'MB free, but 6 checkpoints of .* need'):
        loop.train(TINY, tiny_recipe(), tiny_options(tmp_path), str(session_data), out=quiet)
    assert not os.listdir(tmp_path / 'ckpt')


def test_a_failed_save_names_the_last_good_checkpoint(session_data, tmp_path, monkeypatch):
    real_save = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number > 3:
            raise OSError(28, 'No space left on device')
        return real_save(self, checkpoint_number=checkpoint_number, **kwargs)
    monkeypatch.setattr(tf.train.CheckpointManager, 'save', save)
    with pytest.raises(UserError, match=r'could not save the checkpoint of step 6 .*No space '
                                        r'left on device.*last good checkpoint is .*ckpt-3'):
        loop.train(TINY, tiny_recipe(), tiny_options(tmp_path, save_every=3),
                   str(session_data), out=quiet)
    assert tf.train.latest_checkpoint(str(tmp_path / 'ckpt')).endswith('ckpt-3')


def test_partial_saves_are_removed(tmp_path):
    (tmp_path / 'ckpt-7_temp').mkdir()
    (tmp_path / 'ckpt-7_temp' / 'part-00000-of-00001.index').write_bytes(b'x')
    (tmp_path / 'ckpt-6.index').write_bytes(b'keep')
    assert checkpoint.remove_partial_saves(str(tmp_path)) == [str(tmp_path / 'ckpt-7_temp')]
    assert sorted(os.listdir(tmp_path)) == ['ckpt-6.index']


KINDS = [pytest.param(ModelConfig(num_layers=8, resnet_version=1), id='v1'),
         pytest.param(ModelConfig(num_layers=11, bottleneck=True), id='bottleneck'),
         pytest.param(ModelConfig(num_layers=11, bottleneck=True, resnet_version=1,
                                  shortcut_type='C'), id='v1-bottleneck-C',
                      marks=pytest.mark.slow),
         pytest.param(ModelConfig(num_layers=8, shortcut_type='A_subsample'), id='A_subsample',
                      marks=pytest.mark.slow),
         pytest.param(ModelConfig('wide_resnet', 10, widen_factor=2, dropout_rate=0.3),
                      id='wrn-dropout', marks=pytest.mark.slow),
         pytest.param(ModelConfig('vgg', 11), id='vgg', marks=pytest.mark.slow),
         pytest.param(ModelConfig('imagenet_resnet', 18, resnet_version=2), id='imagenet',
                      marks=pytest.mark.slow)]


@pytest.mark.parametrize('kind', KINDS)
def test_a_few_steps_of_every_kind_train(session_data, tmp_path, kind):
    result = loop.train(kind, tiny_recipe(batch_size=4, num_iterations=2),
                        tiny_options(tmp_path, log_per_iterations=2), str(session_data),
                        out=quiet)
    assert result.step == 2 and np.isfinite(result.last_metrics['loss'])
    assert checkpoint.Saved(result.checkpoint).config == kind


@pytest.mark.slow            # the accuracy band (tests/test_accuracy.py) goes further
def test_training_on_real_images_lowers_the_loss(real_data, tmp_path):
    lines = []
    loop.train(TINY, tiny_recipe(batch_size=64, num_iterations=60,
                                 schedule=Schedule(boundaries=(), values=(0.1,))),
               tiny_options(tmp_path, log_per_iterations=20), str(real_data), out=lines.append)
    losses = [float(line.split('loss ')[1].split()[0]) for line in lines
              if line.startswith('step ') and 'loss' in line]
    assert len(losses) == 3 and losses[-1] < losses[0] - 0.1, losses


def test_the_progress_line_prints_each_window_mean_under_its_name():
    """A window of 4 steps, 3 of them updates, whose sums are loss 6.3, cross-entropy 4.5,
    decay 1.8, accuracy 0.75: the line says the means over the updated steps under their
    names (loss 6.3/3 = 2.1000, accuracy 0.75/3 = 0.250), the rate the schedule gives the
    window's last step (0.005 from step 4 on: step 5's line), and the skipped step."""
    sums = dict(zip(WINDOW, (6.3, 4.5, 1.8, 0.75, 0.15, 3.0, 1.0, -1.0)), stop=0.0, save=0.0)
    lines = []
    log = actions.Log(recipe=tiny_recipe(), options=RunOptions('unused', log_per_iterations=4),
                      reader=lambda stop, save: dict(sums),
                      writer=tf.summary.create_noop_writer(), out=lines.append)
    log.count(4)
    log(5, False, False)
    line, = lines
    words = line.split()
    assert words[:2] == ['step', '5/6']
    assert dict(zip(words[2:8:2], words[3:8:2])) == {'loss': '2.1000', 'accuracy': '0.250',
                                                     'lr': '0.005'}
    assert line.endswith('  skipped 1 non-finite steps')
    assert log.means['cross_entropy'] == pytest.approx(1.5)
    assert log.means['l2_loss'] == pytest.approx(0.6)


def test_the_layout_optimizer_changes_the_speed_only(session_data, tmp_path):
    """A deterministic run with grappler's layout optimizer on and one with it off (the
    trainer's choice on a CPU) end with the same weights, statistics and momentum, within
    float32 round-off; each says its choice in its first line, and TensorFlow's option
    is what the run chose."""
    runs, firsts = {}, {}
    try:
        for on in (True, False):
            lines = []
            runs[on] = all_tensors(loop.train(
                TINY, tiny_recipe(deterministic=True, num_iterations=4),
                tiny_options(tmp_path / str(on), layout_optimizer=on), str(session_data),
                out=lines.append).checkpoint)
            firsts[on] = lines[0]
            assert tf.config.optimizer.get_experimental_options()['layout_optimizer'] is on
    finally:
        tf.config.optimizer.set_experimental_options({'layout_optimizer': True})  # the default
    assert 'layout optimizer on' in firsts[True] and 'layout optimizer off' in firsts[False]
    assert runs[True].keys() == runs[False].keys()
    for key, value in runs[True].items():
        if getattr(value, 'dtype', None) is not None and value.dtype.kind == 'f':
            np.testing.assert_allclose(runs[False][key], value, rtol=1e-4, atol=1e-6,
                                       err_msg=key)


def test_the_layout_optimizer_is_off_on_a_cpu_with_amx_and_on_elsewhere():
    from v2.runtime import devices
    amx = devices.Device('CPU', 'Intel Xeon', has_bf16=True, has_amx=True)
    assert not devices.layout_optimizer_by_default([amx])
    assert devices.layout_optimizer_by_default([devices.Device('CPU', 'AMD EPYC', has_bf16=True)])
    assert devices.layout_optimizer_by_default([devices.Device('GPU', 'NVIDIA H100')])
