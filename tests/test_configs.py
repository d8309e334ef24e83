"""The papers' recipes in configs/*.flags parse and describe what their comments say."""

import pytest
from absl import flags
from conftest import ROOT

from v2.cli import flags as cli_flags

FLAGS = flags.FLAGS
CONFIGS = sorted(p.name for p in (ROOT / 'configs').glob('*.flags')
                 if p.name != 'he2015_schedule.flags')

# file -> (network, a few settings the paper states)
EXPECTED = {
    'he2015_resnet20.flags': ('ResNet-20 v1', dict(weight_decay=1e-4, num_iterations=64000)),
    'he2015_resnet110.flags': ('ResNet-110 v1', dict(warmup_iterations=400)),
    'he2015_resnet1202.flags': ('ResNet-1202 v1', dict(warmup_iterations=400)),
    'he2015_plain56.flags': ('plain-56 v1', dict(num_iterations=64000)),
    'he2016_preact_resnet110.flags': ('ResNet-110', dict(warmup_iterations=400)),
    'he2016_preact_resnet164.flags': ('ResNet-164 bottleneck', dict(batch_size=128)),
    'he2016_preact_resnet1001.flags': ('ResNet-1001 bottleneck', dict(weight_decay=1e-4)),
    'wrn_28_10.flags': ('WRN-28-10', dict(nesterov=True, weight_decay=5e-4,
                                          num_iterations=78000)),
    'wrn_40_4.flags': ('WRN-40-4', dict(nesterov=True)),
    'wrn_16_8.flags': ('WRN-16-8', dict(nesterov=True)),
    'figure6.flags': ('ResNet-110 v1', dict(num_iterations=3200, warmup_iterations=400,
                                            warmup='linear', deterministic=True)),
    'calibration.flags': ('ResNet-110', dict(num_iterations=1600, validation_split=500,
                                             deterministic=True)),
}


@pytest.fixture
def parsed(monkeypatch):
    monkeypatch.chdir(ROOT)            # the files include each other relative to the checkout

    def parse(name):
        FLAGS.unparse_flags()
        FLAGS(['run_trainer.py', '--flagfile=configs/%s' % name])
        return cli_flags.model_config(), cli_flags.recipe()
    yield parse
    FLAGS.unparse_flags()


def test_every_recipe_is_checked():
    assert set(CONFIGS) == set(EXPECTED)


@pytest.mark.parametrize('name', CONFIGS)
def test_recipe_builds_the_papers_network(parsed, name):
    model_config, recipe = parsed(name)
    network, settings = EXPECTED[name]
    assert model_config.describe() == network
    for key, value in settings.items():
        holder = recipe.schedule if key.startswith('warmup') else recipe
        assert getattr(holder, key) == pytest.approx(value), key


def test_wrn_schedule_is_the_papers_in_steps(parsed):
    model_config, recipe = parsed('wrn_28_10.flags')
    assert model_config.dropout_rate == 0.3 and model_config.shortcut_type == 'B'
    steps_per_epoch = 50000 // 128
    assert recipe.schedule.boundaries == tuple(e * steps_per_epoch for e in (60, 120, 160))
    assert recipe.schedule.values == pytest.approx((0.1, 0.02, 0.004, 0.0008))
    assert recipe.num_iterations == 200 * steps_per_epoch


def test_2015_recipes_use_the_papers_strided_option_a(parsed):
    assert parsed('he2015_resnet20.flags')[0].shortcut_type == 'A_subsample'
    assert not parsed('he2015_plain56.flags')[0].shortcut_connections
