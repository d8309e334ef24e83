"""One run's training state, created in one place, and the traced functions that move it.

TrainState holds what a training step changes and a checkpoint keeps: the network,
the momentum buffers, the step, the window's metric sums, the pixel mean, and where a
run has them float16's loss scale and the weight averages. The trainer, the
benchmark, step_variants and the experiments all create it with TrainState.create and
step it with train_steps, so that what they time or train is what the trainer runs,
setting for setting (tests/test_state.py).
"""

import dataclasses

import tensorflow as tf

from v2.nets.model import ModelConfig, build
from v2.runtime import checkpoint, precision
from v2.runtime.ema import WeightAverage
from v2.training import distill
from v2.training.optimizer import Momentum
from v2.training.recipe import Recipe
from v2.training.step import StepParts, Window, WindowReader, make_train_steps


@dataclasses.dataclass(kw_only=True)
class TrainState:
    """Everything a step changes and a checkpoint holds, with what it was built from: its
    network's description, its recipe, the strategy its variables live under and the dtype
    it computes in, so that its methods need none of them handed back."""
    model: tf.Module
    optimizer: Momentum
    step: tf.Variable
    window: Window
    mean: tf.Variable
    model_config: ModelConfig
    recipe: Recipe
    strategy: tf.distribute.Strategy
    dtype: tf.DType
    loss_scale: precision.DynamicLossScale | None = None
    ema: WeightAverage | None = None
    teacher: distill.Teacher | None = None      # read by the step, never saved

    @classmethod
    def create(cls, model_config, recipe, *, strategy, dtype, mean, norm_class=None):
        """The state of a new run of `recipe` under `strategy` (its variables in its scope),
        computing in `dtype`; norm_class replaces batch norm (v2.tools.step_variants)."""
        with strategy.scope():
            model = build(model_config, seed=recipe.seed, compute_dtype=dtype,
                          bn_momentum=recipe.bn_momentum, sync_batch_norm=recipe.sync_batch_norm,
                          zero_init_residual=recipe.zero_init_residual,
                          **({'norm_class': norm_class} if norm_class else {}))
            state = cls(
                model=model,
                optimizer=Momentum(model.trainable_variables, recipe.momentum, recipe.nesterov),
                step=tf.Variable(0, dtype=tf.int64, trainable=False, name='step',
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA),
                window=Window(),
                mean=tf.Variable(mean, trainable=False, name='pixel_mean'),
                model_config=model_config, recipe=recipe, strategy=strategy, dtype=dtype,
                loss_scale=precision.DynamicLossScale() if dtype == tf.float16 else None)
            if recipe.ema_decay:
                state.ema = WeightAverage(model, recipe.ema_decay)
            if recipe.teacher_ckpt:
                state.teacher = distill.load_teacher(recipe.teacher_ckpt, dtype, mean)
        return state

    def checkpoint(self, loss_scale=True, ema=True):
        """Its tf.train.Checkpoint; loss_scale/ema False leave those out (older checkpoints)."""
        return checkpoint.make(self.model, self.mean, step=self.step,
                               optimizer=self.optimizer, training_json=self.recipe.to_json(),
                               loss_scale=self.loss_scale if loss_scale else None,
                               ema=self.ema if ema else None)

    def restore(self, saved, out):
        """Restores the state from a checkpoint (checkpoint.Saved); says what changed in the
        recipe. A run resumed with weight averaging or float16 newly on starts its averages
        from the restored weights, and its loss scale afresh."""
        checkpoint.restore(self.checkpoint(loss_scale=saved.has_loss_scale, ema=saved.has_ema),
                           saved.prefix)
        if self.ema and not saved.has_ema:
            for average, variable in zip(self.ema.averages, self.model.variables):
                average.assign(variable.read_value())
        changes = self.recipe.changes_from(saved.training_json)
        if saved.training_json and changes:
            out('note: resuming with training settings that differ from the checkpoint\'s: %s'
                % changes)

    def step_parts(self) -> StepParts:
        """What the traced step reads and writes, for this state and its recipe."""
        recipe = self.recipe
        return StepParts(model=self.model, optimizer=self.optimizer, schedule=recipe.schedule,
                         step=self.step, window=self.window, pixel_mean=self.mean,
                         weight_decay=recipe.weight_decay, seed=recipe.seed,
                         label_smoothing=recipe.label_smoothing, cutout=recipe.cutout,
                         mixing=recipe.mixing, teacher=self.teacher, kd_alpha=recipe.kd_alpha,
                         kd_temperature=recipe.kd_temperature,
                         loss_scale=self.loss_scale, nan_policy=recipe.nan_policy,
                         ema=self.ema)

    def train_steps(self, jit_compile=False):
        """The traced train_steps(iterator, n) of this state (v2.training.step)."""
        return make_train_steps(self.step_parts(), self.strategy, self.recipe.batch_size,
                                jit_compile)

    def window_reader(self, agree=False) -> WindowReader:
        """The read at the end of a logging window, by name (v2.training.step)."""
        return WindowReader(self.window, self.strategy, agree, self.loss_scale)

    def bytes(self):
        """The bytes of the variables a checkpoint holds (the weights and the optimizer's)."""
        return sum(v.shape.num_elements() * v.dtype.size
                   for v in self.model.variables + self.optimizer.variables)
