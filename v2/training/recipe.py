"""What a training run computes: the recipe, everything that shapes its result.

The defaults are the recipe of He et al. 2015, section 4.2: SGD with momentum 0.9,
weight decay 1e-4, batch 128, learning rate 0.1 divided by 10 at 32k and 48k
iterations, 64k iterations in all. `num_iterations` is the TOTAL: a run restarted
with the same ckpt_path continues from the saved step to that total.

Every checkpoint stores its Recipe as JSON; a resumed run says in one line which
settings changed, and refuses a changed validation split (its numbers would no
longer mean what they say). The rest of a run (where files go, how often it logs and
saves, which devices it uses) is its RunOptions (v2.training.options), never stored.
"""

import dataclasses
import json

from v2.data.pipeline import Mixing
from v2.errors import UserError
from v2.training.schedule import Schedule

NAN_POLICIES = ('stop', 'skip_step')


@dataclasses.dataclass(frozen=True)
class Recipe:
    """The settings that shape the result; stored in every checkpoint."""
    batch_size: int = 128
    num_iterations: int = 64000
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = False
    schedule: Schedule = Schedule()
    seed: int = 0
    precision: str = 'float32'
    deterministic: bool = False
    nan_policy: str = 'stop'
    sync_batch_norm: bool = False
    bn_momentum: float = 0.9
    zero_init_residual: bool = False
    validation_split: int = 0
    label_smoothing: float = 0.0
    cutout: int = 0
    ema_decay: float = 0.0
    mixup_alpha: float = 0.0         # Zhang et al. 2018; 0: off
    cutmix_alpha: float = 0.0        # Yun et al. 2019; 0: off
    cutmix_prob: float = 1.0
    teacher_ckpt: str = ''           # knowledge distillation (Hinton et al. 2015); '': off
    teacher_fingerprint: str = ''    # of the teacher's weights (v2.training.distill)
    kd_alpha: float = 0.9
    kd_temperature: float = 4.0

    def __post_init__(self):
        checks = [('batch_size', self.batch_size >= 1),
                  ('num_iterations', self.num_iterations >= 1),
                  ('nan_policy', self.nan_policy in NAN_POLICIES),
                  ('validation_split', self.validation_split >= 0),
                  ('label_smoothing', 0.0 <= self.label_smoothing < 1.0),
                  ('cutout', 0 <= self.cutout <= 32), ('ema_decay', 0.0 <= self.ema_decay < 1.0),
                  ('mixup_alpha', self.mixup_alpha >= 0), ('cutmix_alpha', self.cutmix_alpha >= 0),
                  ('cutmix_prob', 0.0 <= self.cutmix_prob <= 1.0),
                  ('kd_alpha', 0.0 <= self.kd_alpha <= 1.0),
                  ('kd_temperature', self.kd_temperature > 0)]
        for name, ok in checks:
            if not ok:
                raise UserError('%s=%s is out of range' % (name, getattr(self, name)),
                                settings=(name,))

    @property
    def mixing(self) -> Mixing:
        """mixup and CutMix of this recipe (v2.data.pipeline.mix); false when both are off."""
        return Mixing(self.mixup_alpha, self.cutmix_alpha, self.cutmix_prob)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def changes_from(self, saved_json: str) -> str:
        """'setting old -> new, ...' against a stored recipe; a setting it lacks had its default.

        A changed validation split is refused: the validation images of the run so far
        would have been trained on, or the other way round.
        """
        defaults = json.loads(Recipe().to_json())
        before = dict(defaults, **json.loads(saved_json or '{}'))
        after = json.loads(self.to_json())
        if before.get('teacher_fingerprint', '') != after['teacher_fingerprint']:
            raise UserError('teacher_ckpt=%s, but the run was started %s; a teacher cannot change '
                            'during a run (start a new ckpt_path)' % (
                                after['teacher_ckpt'] or '(none)',
                                'with the teacher %s (weights %s)' % (
                                    before.get('teacher_ckpt'), before['teacher_fingerprint'])
                                if before.get('teacher_fingerprint') else 'without a teacher'),
                            settings=('teacher_ckpt', 'ckpt_path'))
        if before['validation_split'] != after['validation_split']:
            raise UserError('validation_split=%d, but the run was started with %d; a split '
                            'cannot change during a run (start a new ckpt_path)'
                            % (after['validation_split'], before['validation_split']),
                            settings=('validation_split', 'ckpt_path'))
        return ', '.join('%s %s -> %s' % (k, before.get(k), after.get(k))
                         for k in sorted(set(before) | set(after))
                         if before.get(k) != after.get(k))
