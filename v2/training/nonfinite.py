"""What a step with a non-finite loss or gradient does: the one rule, on both sides.

On the device (in the step), with nan_policy 'stop': the step is counted as bad and
applied as any other; the loop then stops at the window's end, before anything is
saved, so the last checkpoint stays the last good one. With 'skip_step', or with
float16's loss scale when only its gradients overflowed: the step is skipped whole
(no weight, momentum, batch-norm statistic or weight average moves; the optimizer,
the averages and the step mask their updates with `updated`) and counted as skipped.

On the host (at the window's end), `check` turns the window's counts into the
decision: stop on a bad step, and stop when every step of a window was skipped,
unless float16's loss scale is still coming down to where the gradients fit.
"""

import dataclasses

import tensorflow as tf

from v2.errors import UserError


@dataclasses.dataclass(frozen=True)
class NonFinitePolicy:
    skip: bool = False           # nan_policy 'skip_step'
    loss_scaled: bool = False    # float16: a dynamic loss scale whose overflows are skipped

    @classmethod
    def of(cls, nan_policy, loss_scale):
        return cls(skip=nan_policy == 'skip_step', loss_scaled=loss_scale is not None)

    @property
    def may_skip(self) -> bool:
        """Whether a step can be skipped: the step then keeps what it must restore."""
        return self.skip or self.loss_scaled

    def judge(self, loss_finite, finite):
        """(updated, bad) of a step, as tensors, from whether its loss and its loss and
        gradients together are finite."""
        updated = finite if self.may_skip else tf.constant(True)
        if self.skip:
            bad = tf.constant(False)
        else:                    # 'stop'; with float16 an overflow of the gradients is skipped
            bad = tf.logical_not(loss_finite if self.loss_scaled else finite)
        return updated, bad

    @staticmethod
    def check(window, current, steps):
        """Raises the one-line error that stops a run, from a window read at step `current`
        (`steps` steps long): its first bad step, or no step updated at all."""
        if window['first_bad'] >= 0:
            raise UserError('the loss or its gradients became non-finite at step %d; stopped '
                            'without saving, so the last checkpoint is the last good one '
                            '(lower lr_values, or nan_policy=skip_step to skip such steps)'
                            % (int(window['first_bad']) + 1),
                            settings=('lr_values', 'nan_policy'))
        if not window['updated'] and not window.get('loss_scale', 0) > 1:  # scale still adapts
            raise UserError('every step from %d to %d had a non-finite loss or gradient and was '
                            'skipped; stopped (lower lr_values)' % (current - steps + 1, current),
                            settings=('lr_values',))
