"""The tools' flags (python -m v2.tools.<name>), defined once, and each tool's own.

The flags of the data, the network, the recipe and the run are the trainer's, in
v2.cli.flags; a tool owns some of them and some of these (BENCHMARK, EXPERIMENTS,
...). Importing this module defines these flags and adds them to v2.cli.flags' ALL
and HELP_GROUPS, so that app.parse refuses each to the programs that do not own it
and --help lists it in its group; v2.cli never imports the tools.
"""

from absl import flags

from v2.cli import flags as cli_flags
from v2.cli.flags import DATA_AND_NETWORK, RECIPE, RUN
from v2.runtime import precision

# The trainer's helpers the tools call, named here so that a tool needs one flags module.
FLAGS = cli_flags.FLAGS
model_config = cli_flags.model_config
numbers = cli_flags.numbers
recipe = cli_flags.recipe
run_options = cli_flags.run_options

# --- the benchmark (python -m v2.tools.benchmark) ---
flags.DEFINE_integer('warmup_steps', 20, 'Steps run before timing (tracing, caches).',
                     lower_bound=1)
flags.DEFINE_integer('windows', 5, 'Timing windows.', lower_bound=1)
flags.DEFINE_integer('window_steps', 30, 'Steps in each timing window.', lower_bound=1)
flags.DEFINE_boolean('keras', True, 'Also time a Keras 3 model.fit of the same network.')
flags.DEFINE_enum('keras_precision', None, list(precision.PRECISIONS),
                  'Precision of the Keras baseline (mixed_* policies); default: --precision. '
                  'E.g. --precision=bfloat16 --keras_precision=float32 compares bf16 training '
                  'against the fp32 Keras fit a user would otherwise run.')
flags.DEFINE_boolean('conv_bound', True, 'Also time each convolution of the net alone: the '
                     'conv ceiling and the conv-only bound on images/second.')
flags.DEFINE_list('rss_steps', [], 'Instead of timing: train this many steps and print the '
                  'resident memory at each listed step (e.g. 500,3000), to show it does not grow.')

# --- the step variants (python -m v2.tools.step_variants) ---
flags.DEFINE_list('variants', [], 'step_variants: the ways to time (default: every one).')
flags.DEFINE_integer('rounds', 3, 'step_variants: rounds, each timing every variant in turn.',
                     lower_bound=1)
flags.DEFINE_boolean('machine_readable', False, 'step_variants: print only the rates.')

# --- the GPU report (python -m v2.tools.gpu_report) ---
flags.DEFINE_float('budget_minutes', 10.0, 'gpu_report: the whole report ends within this many '
                   'minutes (and 30 s); a part that would not finish in time is skipped, one '
                   'running at the deadline is stopped, each listed on the page with why.',
                   lower_bound=0.0)
flags.DEFINE_boolean('rehearse', False, 'gpu_report: run the same plan on the CPU at toy sizes '
                     '(small nets, few steps), to try the deadline, the page and the signals.')

# --- the experiments (python -m v2.tools.experiments), figures and curves ---
flags.DEFINE_string('out', 'files', 'Folder for the figures, the CSV/JSON and the tables '
                    '(gpu_report: for its Markdown, default docs/).')
flags.DEFINE_string('png', 'curves.png', 'The PNG the training curves are drawn to.')
flags.DEFINE_string('title', None, 'The curves\' title (default: the runs drawn).')
flags.DEFINE_string('work_dir', None, 'One folder per run (checkpoints, TensorBoard logs, '
                    'points); default: runs/<command>.')
flags.DEFINE_list('depths', ['20', '56'], 'Depths of the grid (6n+2 for resnet).')
flags.DEFINE_list('seeds', ['1', '2', '3'], 'Seeds; each network of the grid runs once per seed.')
flags.DEFINE_list('networks', ['plain', 'resnet'], 'figure6: plain, resnet or both.')
flags.DEFINE_boolean('reference', False, 'figure6: train the same grid through a Keras 3 model '
                     'of the same net instead (v2.tools.keras_nets), as a check on ours.')
flags.DEFINE_string('previous', '', 'figure6: a figure6.csv written before with the same recipe '
                    '(e.g. files/figure6.csv; its .json beside it is checked): its runs are kept '
                    'as they are and only the depths and seeds it lacks are trained.')
flags.DEFINE_boolean('plot', True, 'Draw the PNGs after writing the CSV/JSON (needs matplotlib).')
flags.DEFINE_list('switches', [], 'switches: the modern options to compare with the default '
                  'recipe (label_smoothing, cosine, ema, cutout, mixup, cutmix, zero_init, '
                  'distill, tta; default: all). distill trains a ResNet-56 teacher first, unless '
                  '--teacher_ckpt names one.')

BENCHMARK = (DATA_AND_NETWORK + RECIPE + RUN
             + ('warmup_steps', 'windows', 'window_steps', 'keras', 'keras_precision',
                'conv_bound', 'rss_steps'))
EXPERIMENTS = (DATA_AND_NETWORK + RECIPE + RUN
               + ('out', 'work_dir', 'depths', 'seeds', 'networks', 'reference', 'previous',
                  'plot', 'switches'))
STEP_VARIANTS = BENCHMARK + ('variants', 'rounds', 'machine_readable')
GPU_REPORT = ('data_path', 'devices', 'tf32', 'out', 'warmup_steps', 'windows', 'window_steps',
              'budget_minutes', 'rehearse')
FIGURES = ('out',)
CURVES = ('png', 'title')
CATALOG = ()

# The --help groups of these flags; v2.cli.flags.add_programs puts timing and the grid of runs
# before output, as a user reads them.
HELP_GROUPS = (
    ('timing', ('warmup_steps', 'windows', 'window_steps', 'keras', 'keras_precision',
                'conv_bound', 'rss_steps', 'variants', 'rounds', 'machine_readable',
                'budget_minutes', 'rehearse')),
    ('the grid of runs', ('depths', 'seeds', 'networks', 'reference', 'previous', 'switches')),
    ('output', ('out', 'work_dir', 'plot', 'png', 'title')),
)
cli_flags.add_programs((BENCHMARK, EXPERIMENTS, STEP_VARIANTS, GPU_REPORT, FIGURES, CURVES,
                        CATALOG), HELP_GROUPS)
