"""The trainer, the benchmark and the experiments train one and the same state and step.

Each creates its TrainState and step through the same functions; this checks that
for one set of flags, every setting that shapes a step (the recipe's, the net's, the
optimizer's) arrives the same in all three, so what the benchmark times and the
experiments train is what the trainer runs.
"""

import numpy as np
import pytest
from conftest import quiet

from v2.cli import app, flags, trainer
from v2.nets import layers
from v2.tools import benchmark, experiments
from v2.tools import flags as tool_flags
from v2.training import loop
from v2.training.state import TrainState

FLAGS = ['--num_layers=8', '--batch_size=8', '--label_smoothing=0.1', '--cutout=8',
         '--ema_decay=0.99', '--nesterov', '--momentum=0.8', '--bn_momentum=0.7',
         '--zero_init_residual', '--nan_policy=skip_step', '--weight_decay=3e-4', '--seed=5',
         '--lr_values=0.05,0.005', '--lr_boundaries=4', '--num_iterations=2',
         '--log_per_iterations=1']


def described(state, parts):
    """Every setting that shapes a step, as plain values."""
    norms = [m for m in state.model.submodules if isinstance(m, layers.BatchNorm)]
    branches = [unit.conv2.kernel.numpy() for units in state.model.stages for unit in units]
    return dict(config=state.model.config, schedule=parts.schedule,
                weight_decay=parts.weight_decay, seed=parts.seed,
                label_smoothing=parts.label_smoothing, cutout=parts.cutout,
                nan_policy=parts.nan_policy, loss_scale=parts.loss_scale is not None,
                ema=parts.ema.decay if parts.ema else None,
                momentum=state.optimizer.momentum, nesterov=state.optimizer.nesterov,
                bn_momentum={m.momentum for m in norms},
                zero_branches=all(not k.any() for k in branches),
                first_kernel=state.model.stem.kernel.numpy().tobytes())


@pytest.mark.slow        # trains and evaluates a grid of one run: the experiments as they are
def test_the_benchmark_and_the_experiments_train_the_trainers_state(session_data, tmp_path,
                                                                     monkeypatch, capsys):
    seen = {}
    real = TrainState.step_parts

    def spy(state):
        parts = real(state)
        seen.setdefault(who, described(state, parts))
        return parts
    monkeypatch.setattr(TrainState, 'step_parts', spy)
    data = '--data_path=%s' % session_data
    who = 'trainer'
    status, line = app.call(trainer.main, ['run_trainer.py', data, '--ckpt_path=%s' % (
        tmp_path / 'trainer'), *FLAGS], flags.TRAINER)
    assert status == 0, line
    who = 'benchmark'

    def time_in_memory(argv):
        config, the_recipe = flags.model_config(), flags.recipe()
        options = flags.run_options(config, ckpt_path=str(tmp_path / 'bench'))
        benchmark.time_in_memory_step(config, the_recipe, options,
                                      loop.set_up(config, the_recipe, options, quiet),
                                      benchmark.Timing(1, 1, 1))
    status, line = app.call(time_in_memory, ['benchmark', data, *FLAGS], tool_flags.BENCHMARK)
    assert status == 0, line
    who = 'experiments'
    status, line = app.call(experiments.main, [
        'experiments', 'table', data, '--depths=8', '--seeds=5', '--work_dir=%s' % (
            tmp_path / 'grid'), '--out=%s' % (tmp_path / 'out'), *FLAGS], tool_flags.EXPERIMENTS)
    assert status == 0, line
    quiet(capsys.readouterr())
    assert set(seen) == {'trainer', 'benchmark', 'experiments'}
    assert seen['trainer']['nesterov'] and seen['trainer']['zero_branches']
    assert seen['trainer']['bn_momentum'] == {0.7} and seen['trainer']['ema'] == 0.99
    for who in ('benchmark', 'experiments'):
        for key, value in seen['trainer'].items():
            assert np.all(seen[who][key] == value), (who, key)
