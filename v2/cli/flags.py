"""The flags of the trainer, the evaluator and the converter, defined once, and the configs
they make.

Each program lists the flags that are its own (TRAINER, EVALUATOR, CONVERT); app.parse
refuses the others in one line, and --help lists them in HELP_GROUPS. The tools'
flags are in v2.tools.flags, which adds them to ALL and HELP_GROUPS when imported
(add_programs); nothing here imports the tools. All of them can be loaded in one
process, so the tests run the programs side by side. `model_config`, `recipe` and
`run_options` turn the parsed flags into the library's ModelConfig, Recipe and
RunOptions.
"""

import dataclasses
import re

from absl import flags

from v2.data import cifar
from v2.errors import UserError
from v2.nets import layers, model
from v2.runtime import distribution, precision
from v2.training import recipe as recipe_lib
from v2.training import schedule
from v2.training.options import RunOptions

FLAGS = flags.FLAGS

# --- the data and the network (trainer, evaluator, tools) ---
flags.DEFINE_string('data_path', None,
                    'Folder of the binary files. Default: what the official archive extracts to, '
                    'cifar-10-batches-bin (CIFAR-10) or cifar-100-binary (CIFAR-100).')
flags.DEFINE_alias('path', 'data_path')
flags.DEFINE_enum('dataset', 'cifar10', ['cifar10', 'cifar100'], 'The data set.')
flags.DEFINE_boolean('coarse_labels', False,
                     'CIFAR-100 only: train on the 20 superclasses instead of the 100 classes.')
flags.DEFINE_enum('model', 'resnet', list(model.MODELS),
                  'Network family: CIFAR ResNet (He et al. 2015/2016), wide ResNet (Zagoruyko & '
                  'Komodakis 2016), VGG with batch norm, ImageNet ResNet adapted to 32x32.')
flags.DEFINE_integer('num_layers', None,
                     'Depth. resnet: 6n+2 (20, 32, 44, 56, 110, 1202), 9n+2 with --bottleneck '
                     '(164, 1001); wide_resnet: 6n+4 (16, 28, 40); vgg: 11, 13, 16, 19; '
                     'imagenet_resnet: 18, 34, 50, 101, 152. Default: 110, 164, 28, 16, 18.')
flags.DEFINE_enum('resnet_version', '2', ['1', '2'],
                  '1: post-activation units (He et al. 2015); 2: pre-activation (He et al. 2016).')
flags.DEFINE_boolean('bottleneck', False,
                     'resnet: 1x1-3x3-1x1 bottleneck units (ResNet-164, ResNet-1001).')
flags.DEFINE_enum('shortcut_type', None, list(layers.SHORTCUT_TYPES),
                  'A: zero-padded identity (average-pool subsampling), A_subsample: the same '
                  'with strided subsampling, B: 1x1 projection where the shape changes, C: '
                  'projection on every unit. Default: what the family\'s paper used (A for '
                  'resnet, B for bottleneck resnet, wide_resnet and imagenet_resnet).')
flags.DEFINE_boolean('shortcut_connections', True,
                     'Add the shortcuts; False gives the plain net of He et al. 2015, Figure 6.')
flags.DEFINE_enum('strided_padding', 'symmetric', list(layers.STRIDED_PADDINGS),
                  'Where a strided convolution centres its window. symmetric: one pixel of '
                  'zeros on every side, as the papers\' Torch code, on the pixel the shortcut '
                  'keeps; tf_same: TensorFlow\'s SAME, one pixel off (how older checkpoints '
                  'were trained).')
flags.DEFINE_integer('widen_factor', 1, 'wide_resnet: k of WRN-d-k.', lower_bound=1)
flags.DEFINE_float('dropout_rate', 0.0, 'Dropout between the convs of basic units (WRN).',
                   lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_integer('eval_batch_size', 500, 'Images per evaluation batch.', lower_bound=1)
flags.DEFINE_enum('precision', 'float32', list(precision.PRECISIONS),
                  'Compute precision of the activations (variables and batch-norm statistics stay '
                  'float32): bfloat16 for CPUs with bf16 units and GPUs of compute capability '
                  '8.0+; float16 for GPUs of 7.0+, with dynamic loss scaling. Elsewhere the run '
                  'says so and computes in float32.')
flags.DEFINE_string('ckpt_path', None,
                    'Trainer: checkpoint folder, resumed from its latest checkpoint (default: '
                    'runs/<model>, e.g. runs/resnet110, runs/plain-56, runs/wrn-28-10). '
                    'Evaluator: a checkpoint prefix, or a folder of checkpoints.')
flags.DEFINE_string('log_path', None,
                    'TensorBoard folder. Trainer default: <ckpt_path>/logs. Evaluator: where '
                    'each checkpoint\'s test figures go (default with --all_checkpoints: the '
                    'trainer\'s, <checkpoint folder>/logs).')

# --- the recipe (trainer; stored in every checkpoint) ---
flags.DEFINE_integer('batch_size', 128, 'Images per training step (all replicas together).',
                     lower_bound=1)
flags.DEFINE_integer('num_iterations', 64000, 'TOTAL training steps (not "more steps").',
                     lower_bound=1)
flags.DEFINE_float('weight_decay', 1e-4, 'L2 weight decay on the conv and linear kernels.',
                   lower_bound=0.0)
flags.DEFINE_float('momentum', 0.9, 'SGD momentum.', lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_boolean('nesterov', False, 'Nesterov momentum (Zagoruyko & Komodakis 2016).')
flags.DEFINE_list('lr_values', ['0.1', '0.01', '0.001'],
                  'Learning rates, one more than boundaries.')
flags.DEFINE_list('lr_boundaries', ['32000', '48000'], 'Steps at which the next rate starts.')
flags.DEFINE_enum('lr_decay', 'piecewise', list(schedule.DECAYS),
                  'piecewise: --lr_values between --lr_boundaries (the papers); cosine: the first '
                  'of --lr_values down to 0 at --num_iterations along half a cosine.')
flags.DEFINE_integer('warmup_iterations', 0,
                     'Steps of warm-up first (He et al. 2015 used 400 for ResNet-110).',
                     lower_bound=0)
flags.DEFINE_float('warmup_lr', 0.01, 'Learning rate during the warm-up (linear: where it '
                   'starts).', lower_bound=0.0)
flags.DEFINE_enum('warmup', 'constant', list(schedule.WARMUPS),
                  'constant: --warmup_lr throughout the warm-up, then the first rate (He et al. '
                  '2015); linear: from --warmup_lr up to the first rate in equal steps (Goyal '
                  'et al. 2017).')
flags.DEFINE_integer('seed', 0, 'Seed of initialisation, shuffling and augmentation.')
flags.DEFINE_boolean('deterministic', False,
                     'TensorFlow op determinism: a run interrupted and resumed ends with the same '
                     'weights, bit for bit, as one never interrupted (somewhat slower).')
flags.DEFINE_enum('nan_policy', 'stop', list(recipe_lib.NAN_POLICIES),
                  'On a non-finite loss: stop without saving (the last checkpoint stays good), '
                  'or skip that step\'s update and go on.')
flags.DEFINE_boolean('sync_batch_norm', False,
                     'Batch-norm statistics over the global batch (all replicas) instead of '
                     'each replica\'s own batch, as in the papers.')
flags.DEFINE_float('bn_momentum', 0.9, 'Batch norm\'s moving averages keep this much of their '
                   'value at each step (0.9 as in the papers\' Torch code).',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_boolean('zero_init_residual', False,
                     'Start every residual branch at zero (its last batch-norm scale, or its last '
                     'conv in pre-activation units), so each unit starts as its shortcut (Goyal et '
                     'al. 2017). Plain nets are left as they are.')
flags.DEFINE_integer('validation_split', 0,
                     'Hold out the last N training images (He et al. 2015 used 5000): --eval_every '
                     'then evaluates on them, never on the test set, and the pixel mean comes '
                     'from the rest. Fixed for a run: a resume with another value is refused.',
                     lower_bound=0)
flags.DEFINE_float('label_smoothing', 0.0, 'Off by default (the papers). Train against targets '
                   '1-e on the label and e/K elsewhere (Szegedy et al. 2016).',
                   lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_integer('cutout', 0, 'Off by default (the papers). Zero a random NxN square of '
                     'each training image (DeVries & Taylor 2017 used 16 for CIFAR-10).',
                     lower_bound=0, upper_bound=32)
flags.DEFINE_float('mixup_alpha', 0.0, 'Off by default (the papers). mixup (Zhang et al. 2018): '
                   'each batch blended with a shuffled copy of itself, lam ~ Beta(a, a), the '
                   'labels blended alike; they used 1.0 for CIFAR-10.', lower_bound=0.0)
flags.DEFINE_float('cutmix_alpha', 0.0, 'Off by default (the papers). CutMix (Yun et al. 2019): '
                   'a box of a shuffled copy pasted into each image, its side from lam ~ Beta(a, '
                   'a), the labels weighted by the box\'s area after clipping; they used 1.0.',
                   lower_bound=0.0)
flags.DEFINE_float('cutmix_prob', 1.0, 'The share of batches CutMix is applied to (Yun et al. '
                   'used 0.5 on CIFAR); with --mixup_alpha too, the other batches are mixup.',
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_string('teacher_ckpt', None, 'Off by default (the papers). Knowledge distillation '
                    '(Hinton et al. 2015) from this checkpoint of a trained net (a prefix or a '
                    'run folder; any network this project trains, of the same classes).')
flags.DEFINE_float('kd_alpha', 0.9, 'With --teacher_ckpt: the weight of the teacher\'s soft '
                   'targets; 1 - kd_alpha weighs the labels.', lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_float('kd_temperature', 4.0, 'With --teacher_ckpt: the temperature T of both '
                   'softmaxes; the soft term is scaled by T^2.', lower_bound=1e-3)
flags.DEFINE_float('ema_decay', 0.0, 'Off by default (the papers). Keep a moving average of the '
                   'weights with this decay (e.g. 0.999); evaluations, the evaluator and exports '
                   'then use it.', lower_bound=0.0, upper_bound=0.9999)

# --- how a training run runs (trainer; not stored) ---
flags.DEFINE_integer('log_per_iterations', 100, 'Print and summarise every N steps.',
                     lower_bound=1)
flags.DEFINE_string('save_every', '1000',
                    'Write a checkpoint at the first logging step at least this many steps (1000) '
                    'or this long (30m, 600s, 2h) after the last one; also at the end and on a '
                    'stop request.')
flags.DEFINE_integer('max_to_keep', 5, 'Checkpoints kept in --ckpt_path.', lower_bound=1)
flags.DEFINE_integer('eval_every', 0, 'Evaluate every N steps (0: never): the validation images '
                     'with --validation_split, the test set without.', lower_bound=0)
flags.DEFINE_integer('steps_per_call', 1,
                     'Training steps per call of the traced step: on a GPU, more keeps it busy '
                     'when a step takes only milliseconds.', lower_bound=1)
flags.DEFINE_boolean('jit_compile', None,
                     'Compile the step with XLA. Default: on GPUs, off on CPUs (where it is '
                     'slower: docs/performance.md).')
flags.DEFINE_boolean('layout_optimizer', None,
                     "Grappler's layout optimizer. Default: off on CPUs with AMX (where it only "
                     'adds transposes), on elsewhere; the weights are the same either way.')
flags.DEFINE_enum('prepare_batches', 'auto', ['auto', 'host', 'device'],
                  'Where training batches are normalised and augmented: device (uint8 batches '
                  'prepared inside the step, a quarter of the bytes to a GPU), host (tf.data\'s '
                  'threads; one-device runs), or auto: the host on one CPU, else the device.')
flags.DEFINE_boolean('tf32', True,
                     'GPUs of compute capability 8.0+: float32 matrix work in TF32 (TensorFlow\'s '
                     'default); false for IEEE float32, e.g. to compare with a CPU.')
flags.DEFINE_enum('distribution_strategy', 'default', list(distribution.STRATEGIES),
                  'default: one device (the first GPU, or --devices); mirrored: every local GPU '
                  '(or --devices, or --cpu_devices) in sync; multi_worker: several machines, the '
                  'cluster read from TF_CONFIG (worker 0 is the chief and writes checkpoints).')
flags.DEFINE_list('devices', [], 'The device(s) to use, e.g. /gpu:1 (or GPU:1, /device:GPU:1, '
                  'TensorFlow\'s full name), /cpu:0, or /gpu:0,/gpu:1 with mirrored (default: '
                  'the first GPU; every GPU with mirrored). The evaluator uses one.')
flags.DEFINE_integer('cpu_devices', 0, 'mirrored: split the CPU into this many logical devices '
                     '(to try mirrored training without GPUs).', lower_bound=0)
flags.DEFINE_integer('worker_timeout', 0,
                     'multi_worker: seconds a collective waits for the other workers before this '
                     'worker gives up (0: no timeout).', lower_bound=0)
flags.DEFINE_boolean('download', False,
                     'Fetch the official binary archive into --data_path first (MD5-checked, '
                     'resumable) unless its files are there.')
flags.DEFINE_string('download_url', None, 'Another address of the archive (a mirror).')
flags.DEFINE_string('download_md5', None, 'The MD5 of the archive at --download_url.')
flags.DEFINE_boolean('dry_run', False, 'Print the architecture and the input pipeline, then exit.')

# --- the evaluator ---
flags.DEFINE_boolean('all_checkpoints', False, 'Evaluate every checkpoint in the folder.')
flags.DEFINE_string('output_json', None, 'Also write the figures to this JSON file.')
flags.DEFINE_boolean('tta', False, 'Also evaluate each test image flipped and average the two '
                     'views\' logits (test-time augmentation; off by default, as in the papers).')
flags.DEFINE_boolean('temperature_scaling', False,
                     'Also give the calibration figures after temperature scaling (Guo et al. '
                     '2017), its temperature fitted on the validation images the run held out '
                     '(--validation_split), never on the test set.')
flags.DEFINE_string('reliability_png', None,
                    'Also draw the reliability diagram (accuracy against confidence in the ECE\'s '
                    '15 bins) of the last checkpoint to this PNG (needs matplotlib).')
flags.DEFINE_boolean('averaged', True, 'For a run with --ema_decay: evaluate and export its '
                     'weight averages (false: its live weights).')
flags.DEFINE_string('export_dir', None,
                    'Instead of evaluating: write the checkpoint as a SavedModel here (uint8 '
                    'images in, probabilities and classes out, mean subtraction built in).')
flags.DEFINE_list('tflite', [], 'With --export_dir: also write <export_dir>/model_<kind>.tflite '
                  'for each kind of float32, float16, int8, each checked against the SavedModel '
                  'on the test images.')
flags.DEFINE_boolean('onnx', False, 'With --export_dir: also write <export_dir>/model.onnx '
                     '(tf2onnx; pip install .[onnx]), checked against the SavedModel on the '
                     'test images with onnxruntime.')
flags.DEFINE_list('images', [], 'Instead of evaluating: print the predicted classes of these '
                  'image files (PNG, JPEG, ...; resized to 32x32 where needed); a .tflite '
                  '--ckpt_path runs them through TensorFlow Lite\'s interpreter.')

# --- the converter (python -m v2.cli.convert) ---
flags.DEFINE_string('image_folder', None, 'Your images: one folder of PNG/JPEG files per class '
                    '(or train/ and test/ folders of such folders), converted into --data_path.')
flags.DEFINE_float('test_fraction', 0.2, 'Without train/ and test/ folders: the share of each '
                   'class held out as the test set.')

DATA_AND_NETWORK = ('data_path', 'dataset', 'coarse_labels', 'model', 'num_layers',
                    'resnet_version', 'bottleneck', 'shortcut_type', 'shortcut_connections',
                    'strided_padding', 'widen_factor', 'dropout_rate', 'eval_batch_size',
                    'precision')
RECIPE = ('batch_size', 'num_iterations', 'weight_decay', 'momentum', 'nesterov', 'lr_values',
          'lr_boundaries', 'lr_decay', 'warmup_iterations', 'warmup_lr', 'warmup', 'seed',
          'deterministic', 'nan_policy', 'sync_batch_norm', 'bn_momentum', 'zero_init_residual',
          'validation_split', 'label_smoothing', 'cutout', 'ema_decay', 'mixup_alpha',
          'cutmix_alpha', 'cutmix_prob', 'teacher_ckpt', 'kd_alpha', 'kd_temperature')
RUN = ('log_per_iterations', 'save_every', 'max_to_keep', 'eval_every', 'steps_per_call',
       'jit_compile', 'layout_optimizer', 'prepare_batches', 'tf32', 'distribution_strategy',
       'devices', 'cpu_devices', 'worker_timeout')
TRAINER = (DATA_AND_NETWORK + RECIPE + RUN
           + ('ckpt_path', 'log_path', 'download', 'download_url', 'download_md5', 'dry_run'))
EVALUATOR = DATA_AND_NETWORK + ('ckpt_path', 'log_path', 'all_checkpoints', 'output_json', 'tta',
                                'averaged', 'export_dir', 'tflite', 'onnx', 'images', 'devices',
                                'temperature_scaling', 'reliability_png')
CONVERT = ('image_folder', 'data_path', 'test_fraction')
# Every flag of a program loaded in this process, which app.parse refuses to the programs
# that do not own it: these three's, and the tools' once v2.tools.flags is imported
# (add_programs). Read it as flags.ALL, when it is used: the tuple is replaced as it grows.
ALL = tuple(dict.fromkeys(TRAINER + EVALUATOR + CONVERT))

# How --help groups a program's own flags, as a user thinks of them; every flag of ALL is in
# one group. The tools add theirs (add_programs).
HELP_GROUPS = (
    ('data and network', ('data_path', 'dataset', 'coarse_labels', 'download', 'download_url',
                          'download_md5', 'image_folder', 'test_fraction', 'model', 'num_layers',
                          'resnet_version', 'bottleneck', 'shortcut_type', 'shortcut_connections',
                          'strided_padding', 'widen_factor', 'dropout_rate')),
    ('recipe (stored in every checkpoint)', RECIPE),
    ('run and devices', ('precision', 'devices', 'distribution_strategy', 'cpu_devices',
                         'jit_compile', 'layout_optimizer', 'prepare_batches', 'tf32',
                         'steps_per_call',
                         'eval_batch_size', 'worker_timeout', 'log_per_iterations', 'save_every',
                         'max_to_keep', 'eval_every', 'dry_run')),
    ('evaluation', ('all_checkpoints', 'tta', 'averaged', 'temperature_scaling', 'images')),
    ('output', ('ckpt_path', 'log_path', 'output_json', 'reliability_png', 'export_dir', 'tflite',
                'onnx')),
)


def add_programs(programs, help_groups):
    """Makes the flags of more programs (each a tuple of its own flags) ours, in ALL, and
    adds their (title, flags) help groups to HELP_GROUPS: to the group of the same title,
    or as a new group just before the next of `help_groups` already there (else last),
    so that both orders of the titles hold. The tools' flags module calls it once."""
    global ALL, HELP_GROUPS
    ALL = tuple(dict.fromkeys(ALL + tuple(name for own in programs for name in own)))
    groups = [(title, tuple(names)) for title, names in HELP_GROUPS]
    for i, (title, names) in enumerate(help_groups):
        titles = [t for t, _ in groups]
        if title in titles:
            at = titles.index(title)
            groups[at] = (title, groups[at][1] + tuple(names))
        else:
            later = [t for t, _ in help_groups[i + 1:] if t in titles]
            groups.insert(titles.index(later[0]) if later else len(groups), (title, tuple(names)))
    HELP_GROUPS = tuple(groups)


# Flags that do not apply to a family, refused when given explicitly.
NOT_FOR = {
    'vgg': ('resnet_version', 'bottleneck', 'shortcut_type', 'shortcut_connections',
            'strided_padding', 'widen_factor', 'dropout_rate'),
    'imagenet_resnet': ('bottleneck', 'widen_factor'),
    'resnet': ('widen_factor',),
    'wide_resnet': ('bottleneck',),
}
ARCHITECTURE = ('model', 'num_layers', 'resnet_version', 'bottleneck', 'shortcut_type',
                'shortcut_connections', 'strided_padding', 'widen_factor', 'dropout_rate',
                'dataset', 'coarse_labels')


def _dataset_name():
    if FLAGS.coarse_labels:
        if FLAGS.dataset != 'cifar100':
            raise UserError('--coarse_labels applies to --dataset=cifar100 only')
        return 'cifar100_coarse'
    return FLAGS.dataset


def architecture_values():
    """The ModelConfig fields the architecture flags give, explicit or default."""
    dataset = cifar.dataset_of(_dataset_name(), FLAGS.data_path)
    return dict(model=FLAGS.model, num_layers=FLAGS.num_layers,
                resnet_version=int(FLAGS.resnet_version), bottleneck=FLAGS.bottleneck,
                shortcut_type=FLAGS.shortcut_type,
                shortcut_connections=FLAGS.shortcut_connections,
                strided_padding=FLAGS.strided_padding, widen_factor=FLAGS.widen_factor,
                dropout_rate=FLAGS.dropout_rate,
                dataset=dataset, num_classes=cifar.spec_of(dataset, FLAGS.data_path).num_classes)


def _check_applicable():
    """Refuses a flag set explicitly for a family it means nothing to, in one line."""
    for name in NOT_FOR.get(FLAGS.model, ()):
        if FLAGS[name].present:
            raise UserError('--%s does not apply to --model=%s' % (name, FLAGS.model))
    if FLAGS['shortcut_type'].present and not FLAGS.shortcut_connections:
        raise UserError('--shortcut_type=%s makes no sense with --shortcut_connections=false '
                        '(the plain net has no shortcuts)' % FLAGS.shortcut_type)


def model_config(**changes) -> model.ModelConfig:
    """The ModelConfig the flags describe (the trainer's; every field counts)."""
    _check_applicable()
    return model.ModelConfig(**dict(architecture_values(), **changes))


def explicit_architecture():
    """The ModelConfig fields the user set on the command line or in a flag file."""
    _check_applicable()
    values = architecture_values()
    fields = {f.name for f in dataclasses.fields(model.ModelConfig)}
    given = {name for name in ARCHITECTURE if FLAGS[name].present}
    if given & {'dataset', 'coarse_labels'}:
        given |= {'dataset', 'num_classes'}
    return {k: v for k, v in values.items() if k in given and k in fields}


def data_path(config):
    """--data_path, or the folder the data set's official archive extracts to."""
    return FLAGS.data_path or cifar.spec_of(config.dataset).folder


def numbers(flag, kind, *, at_least_one=False):
    """The values of a list flag as `kind` (int or float); a one-line error naming the flag
    where one is not such a number, or (at_least_one) where there are none."""
    try:
        values = tuple(kind(v) for v in FLAGS[flag].value)
    except ValueError:
        raise UserError('--%s=%s: expected a comma-separated list of %s'
                        % (flag, ','.join(FLAGS[flag].value),
                           'integers' if kind is int else 'numbers')) from None
    if at_least_one and not values:
        raise UserError('--%s: give at least one value' % flag)
    return values


def recipe(**changes) -> recipe_lib.Recipe:
    """The Recipe the flags describe."""
    values = dict(
        batch_size=FLAGS.batch_size, num_iterations=FLAGS.num_iterations,
        weight_decay=FLAGS.weight_decay, momentum=FLAGS.momentum, nesterov=FLAGS.nesterov,
        schedule=schedule.Schedule(boundaries=numbers('lr_boundaries', int),
                                   values=numbers('lr_values', float),
                                   warmup_iterations=FLAGS.warmup_iterations,
                                   warmup_lr=FLAGS.warmup_lr, warmup=FLAGS.warmup,
                                   decay=FLAGS.lr_decay,
                                   cosine_steps=(changes.get('num_iterations',
                                                             FLAGS.num_iterations)
                                                 if FLAGS.lr_decay == 'cosine' else 0)),
        seed=FLAGS.seed, precision=FLAGS.precision, deterministic=FLAGS.deterministic,
        nan_policy=FLAGS.nan_policy, sync_batch_norm=FLAGS.sync_batch_norm,
        bn_momentum=FLAGS.bn_momentum, zero_init_residual=FLAGS.zero_init_residual,
        validation_split=FLAGS.validation_split, label_smoothing=FLAGS.label_smoothing,
        cutout=FLAGS.cutout, ema_decay=FLAGS.ema_decay, mixup_alpha=FLAGS.mixup_alpha,
        cutmix_alpha=FLAGS.cutmix_alpha, cutmix_prob=FLAGS.cutmix_prob,
        teacher_ckpt=FLAGS.teacher_ckpt or '', kd_alpha=FLAGS.kd_alpha,
        kd_temperature=FLAGS.kd_temperature)
    values.update(changes)
    return recipe_lib.Recipe(**values)


def save_every():
    """(steps, seconds) of --save_every: '1000' is steps, '30m', '600s' or '2h' a time."""
    text = FLAGS.save_every.strip()
    if text.isdigit() and int(text) > 0:
        return int(text), 0.0
    match = re.fullmatch(r'(\d+(?:\.\d+)?)\s*([smh])', text)
    if not match or float(match.group(1)) <= 0:
        raise UserError('--save_every=%s: expected a number of steps (1000) or a time (30m, 600s, '
                        '2h)' % FLAGS.save_every)
    seconds = float(match.group(1)) * {'s': 1, 'm': 60, 'h': 3600}[match.group(2)]
    return 2 ** 62, seconds


def run_options(config, **changes) -> RunOptions:
    """The RunOptions the flags describe; `config` names the default checkpoint folder."""
    ckpt_path = FLAGS.ckpt_path or 'runs/' + config.slug()
    steps, seconds = save_every()
    values = dict(ckpt_path=ckpt_path, log_path=FLAGS.log_path,
                  log_per_iterations=FLAGS.log_per_iterations, save_every=steps,
                  save_every_secs=seconds, max_to_keep=FLAGS.max_to_keep,
                  eval_every=FLAGS.eval_every, eval_batch_size=FLAGS.eval_batch_size,
                  steps_per_call=FLAGS.steps_per_call, jit_compile=FLAGS.jit_compile,
                  layout_optimizer=FLAGS.layout_optimizer, prepare_batches=FLAGS.prepare_batches,
                  tf32=FLAGS.tf32, distribution_strategy=FLAGS.distribution_strategy,
                  devices=tuple(FLAGS.devices), cpu_devices=FLAGS.cpu_devices,
                  worker_timeout=FLAGS.worker_timeout)
    values.update(changes)
    return RunOptions(**values)
