"""The trainer's flags (beyond the shared ones of v2.options) and the configs they make.

Defined once, at import, for run_trainer.py and the benchmark alike.
"""

from absl import flags

from v2 import distribution, options, schedule, train
from v2.errors import UserError

flags.DEFINE_string('ckpt_path', None,
                    'Checkpoint folder; resumes from its latest checkpoint. '
                    'Default: runs/<model>, e.g. runs/resnet110, runs/plain-net56, runs/wrn-28-10.')
flags.DEFINE_string('log_path', None, 'TensorBoard folder. Default: <ckpt_path>/logs.')
flags.DEFINE_integer('batch_size', 128, 'Images per training step.', lower_bound=1)
flags.DEFINE_integer('num_iterations', 64000, 'TOTAL training steps (not "more steps").',
                     lower_bound=1)
flags.DEFINE_integer('log_per_iterations', 100, 'Print, summarise and checkpoint every N steps.',
                     lower_bound=1)
flags.DEFINE_float('weight_decay', 1e-4, 'L2 weight decay on the conv and linear kernels.',
                   lower_bound=0.0)
flags.DEFINE_float('momentum', 0.9, 'SGD momentum.', lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_boolean('nesterov', False, 'Nesterov momentum (Zagoruyko & Komodakis 2016).')
flags.DEFINE_list('lr_values', ['0.1', '0.01', '0.001'], 'Learning rates, one more than boundaries.')
flags.DEFINE_list('lr_boundaries', ['32000', '48000'], 'Steps at which the next rate starts.')
flags.DEFINE_integer('warmup_iterations', 0,
                     'Steps at --warmup_lr first (He et al. 2015 used 400 for ResNet-110).',
                     lower_bound=0)
flags.DEFINE_float('warmup_lr', 0.01, 'Learning rate during the warm-up (linear: where it '
                   'starts).', lower_bound=0.0)
flags.DEFINE_enum('warmup', 'constant', list(schedule.WARMUPS),
                  'constant: --warmup_lr throughout the warm-up, then the first rate (He et al. '
                  '2015); linear: from --warmup_lr up to the first rate in equal steps (Goyal '
                  'et al. 2017).')
flags.DEFINE_float('bn_momentum', 0.9, 'Batch norm\'s moving averages keep this much of their '
                   'value at each step (0.9 as in the papers\' Torch code).',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_boolean('zero_init_residual', False,
                     'Start every residual branch at zero (its last batch-norm scale, or its last '
                     'conv in pre-activation units), so each unit starts as its shortcut (Goyal et '
                     'al. 2017). Plain nets are left as they are.')
flags.DEFINE_integer('max_to_keep', 5, 'Checkpoints kept in --ckpt_path.', lower_bound=1)
flags.DEFINE_integer('eval_every', 0, 'Evaluate on test_batch.bin every N steps (0: never).',
                     lower_bound=0)
flags.DEFINE_integer('seed', 0, 'Seed of initialisation, shuffling and augmentation.')
flags.DEFINE_boolean('deterministic', False,
                     'TensorFlow op determinism: a run interrupted and resumed ends with the same '
                     'weights, bit for bit, as one never interrupted (somewhat slower).')
flags.DEFINE_enum('nan_policy', 'stop', ['stop', 'skip_step'],
                  'On a non-finite loss: stop without saving (the last checkpoint stays good), '
                  'or skip that step\'s update and go on.')
flags.DEFINE_boolean('download', False,
                     'Fetch the official binary archive into --data_path first (MD5-checked, '
                     'resumable) unless its files are there.')
flags.DEFINE_string('download_url', None, 'Another address of the archive (a mirror).')
flags.DEFINE_string('download_md5', None, 'The MD5 of the archive at --download_url.')
flags.DEFINE_boolean('dry_run', False, 'Print the architecture and the input pipeline, then exit.')
flags.DEFINE_boolean('jit_compile', False,
                     'Compile the training step with XLA: faster on GPUs, about 2x slower on the '
                     'CPUs measured here (see README).')

flags.DEFINE_enum('distribution_strategy', 'default', list(distribution.STRATEGIES),
                  'default: one device; mirrored: every local GPU (or --devices, or '
                  '--cpu_devices) in sync; multi_worker: several machines, the cluster read '
                  'from TF_CONFIG (worker 0 is the chief and writes the checkpoints).')
flags.DEFINE_list('devices', [], 'mirrored: the devices to use, e.g. /gpu:0,/gpu:1 '
                  '(default: every GPU).')
flags.DEFINE_integer('cpu_devices', 0, 'mirrored: split the CPU into this many logical devices '
                     '(to try mirrored training without GPUs).', lower_bound=0)
flags.DEFINE_boolean('sync_batch_norm', False,
                     'Batch-norm statistics over the global batch (all replicas) instead of '
                     'each replica\'s own batch, as in the papers.')
flags.DEFINE_integer('worker_timeout', 60,
                     'multi_worker: seconds a collective waits for the other workers before '
                     'this worker gives up with an error.', lower_bound=1)

FLAGS = flags.FLAGS


def _numbers(flag, kind):
    try:
        return tuple(kind(v) for v in FLAGS[flag].value)
    except ValueError:
        raise UserError('--%s=%s: expected a comma-separated list of %s'
                        % (flag, ','.join(FLAGS[flag].value),
                           'integers' if kind is int else 'numbers')) from None


def configs_from_flags():
    """(ModelConfig, TrainConfig) from the parsed flags; UserError for a bad combination."""
    model_config = options.model_config()
    ckpt_path = FLAGS.ckpt_path or 'runs/' + model_config.slug()
    config = train.TrainConfig(
        ckpt_path=ckpt_path,
        log_path=FLAGS.log_path or ckpt_path + '/logs',
        batch_size=FLAGS.batch_size,
        num_iterations=FLAGS.num_iterations,
        log_per_iterations=FLAGS.log_per_iterations,
        weight_decay=FLAGS.weight_decay,
        momentum=FLAGS.momentum,
        nesterov=FLAGS.nesterov,
        schedule=schedule.Schedule(boundaries=_numbers('lr_boundaries', int),
                                   values=_numbers('lr_values', float),
                                   warmup_iterations=FLAGS.warmup_iterations,
                                   warmup_lr=FLAGS.warmup_lr, warmup=FLAGS.warmup),
        max_to_keep=FLAGS.max_to_keep,
        eval_every=FLAGS.eval_every,
        eval_batch_size=FLAGS.eval_batch_size,
        seed=FLAGS.seed,
        precision=FLAGS.precision,
        jit_compile=FLAGS.jit_compile,
        deterministic=FLAGS.deterministic,
        nan_policy=FLAGS.nan_policy,
        sync_batch_norm=FLAGS.sync_batch_norm,
        bn_momentum=FLAGS.bn_momentum,
        zero_init_residual=FLAGS.zero_init_residual,
        distribution_strategy=FLAGS.distribution_strategy,
        devices=tuple(FLAGS.devices),
        cpu_devices=FLAGS.cpu_devices,
        worker_timeout=FLAGS.worker_timeout)
    return model_config, config
