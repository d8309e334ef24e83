"""Training and evaluation throughput of the real trainer, beside a Keras 3 baseline.

  python -m v2.tools.benchmark --num_layers=20 --precision=float32

It takes the trainer's flags (network, --batch_size, --precision, --jit_compile,
--steps_per_call, ...) plus the timing flags below, and prints the trainer's set-up
(v2.training.loop.set_up: its notes, then the device) first.

It trains through v2.training.loop.train itself (binary files -> tf.data -> the
traced step, with augmentation on the device -> summaries), with one logging window
per timing window. A window's time runs from the end of the previous window's read
of its metrics to the end of its own: each read waits for the device, so on a GPU
the clock measures the work done, not the launches. It drops the warm-up windows
and reports the median, min and max images/second, the achieved GFLOP/s and the
peak resident memory. In the same run it times the same step on one in-memory
batch (the input pipeline's cost), evaluation passes, and a straightforward Keras 3
`model.fit` of the same network on the same batches, on the same device, with
Keras's own choice of XLA (jit_compile='auto'): the baseline a user would otherwise
write. It also times each of the net's convolutions alone (v2.tools.conv_timing):
the fastest rate this machine reaches on them (the conv ceiling) and the
images/second a step made only of convolutions would reach (the bound no step here
can beat). Without --data_path it writes random CIFAR-10 files of the full size
(50,000 + 10,000 records) to a temporary folder.
"""

import dataclasses
import os
import resource
import statistics
import tempfile
import time

import numpy as np
import tensorflow as tf

from v2.cli import app
from v2.data import cifar, pipeline
from v2.errors import UserError
from v2.evaluation.evaluate import Evaluator
from v2.nets import model
from v2.runtime import devices, distribution, memory
from v2.runtime import precision as precision_lib
from v2.tools import conv_timing, flags
from v2.training import loop
from v2.training.state import TrainState

FLAGS = flags.FLAGS


def write_random_cifar10(folder, train_records=50000, test_records=10000, seed=0):
    """Random images and labels in the official CIFAR-10 binary layout."""
    rng = np.random.default_rng(seed)
    names = [(n, train_records // 5) for n in cifar.CIFAR10.train_files]
    names += [(cifar.CIFAR10.test_files[0], test_records)]
    for name, count in names:
        records = rng.integers(0, 256, size=(count, cifar.CIFAR10.record_bytes), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(os.path.join(folder, name))


@dataclasses.dataclass(frozen=True)
class Timing:
    """How many windows are timed, of how many steps, after how many warm-up windows."""
    warmup_windows: int
    windows: int
    steps: int

    @property
    def total_steps(self):
        return (self.warmup_windows + self.windows) * self.steps

    def timed(self, rates):
        """The rates of the timed windows (the warm-up's dropped)."""
        return rates[self.warmup_windows:self.warmup_windows + self.windows]


def current_rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def describe(rates):
    return '%7.0f  (min %.0f, max %.0f)' % (statistics.median(rates), min(rates), max(rates))


def memory_over_steps(model_config, recipe, options, data_path, steps):
    """Resident memory (MiB) after each of `steps` in one real training run."""
    marks = {}

    def sample(step):
        if step in steps:
            marks[step] = current_rss_mib()
    loop.train(model_config, dataclasses.replace(recipe, num_iterations=max(steps)), options,
               data_path, out=lambda line: None, on_step=sample)
    return marks


def time_trainer(model_config, recipe, options, data_path, timing):
    """Images/second of each logging window of a real training run."""
    rates = []
    loop.train(model_config, dataclasses.replace(recipe, num_iterations=timing.total_steps),
               dataclasses.replace(options, log_per_iterations=timing.steps), data_path,
               out=lambda line: None,
               on_record=lambda step, split, means: rates.append(means['images_per_second'])
               if split == 'train' else None)
    return timing.timed(rates)


def time_in_memory_step(model_config, recipe, options, setup, timing):
    """Images/second of the trainer's traced step fed one batch held in memory.

    The state and step are the trainer's own (TrainState.create and train_steps: every
    setting of the recipe), under the strategy, dtype and XLA of the trainer's set-up
    (`setup`, v2.training.loop.set_up), and the batch takes the trainer's way to the
    device (prefetched to the GPU, or split into per-replica batches); it is uint8
    where the trainer prepares its batches in the step and float32, prepared once,
    where it prepares them on the host. What this leaves out, next to the trainer's
    rate, is the input pipeline's reading, shuffling and preparation. Every window runs
    exactly timing.steps steps, in calls of options.steps_per_call.
    """
    cluster = setup.cluster
    mean = np.full([32, 32, 3], 120.0, np.float32)
    state = TrainState.create(model_config, recipe, strategy=cluster.strategy,
                              dtype=setup.dtype, mean=mean)
    steps = state.train_steps(setup.jit)
    read_window = state.window_reader()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, [recipe.batch_size, 32, 32, 3], dtype=np.uint8)
    labels = rng.integers(0, model_config.num_classes, [recipe.batch_size], dtype=np.int32)
    if setup.on_host:
        images = pipeline.normalize(images, mean)
    batches = iter(distribution.distribute_batches(
        cluster, lambda: tf.data.Dataset.from_tensors((images, labels)).repeat(),
        recipe.batch_size, setup.on_gpu))
    rates = []
    for _ in range(timing.warmup_windows + timing.windows):
        start = time.perf_counter()
        for n in calls(timing.steps, options.steps_per_call):
            steps(batches, tf.constant(n, tf.int32))
        read_window()                                     # waits for the device
        rates.append(timing.steps * recipe.batch_size / (time.perf_counter() - start))
    return timing.timed(rates)


def calls(steps, steps_per_call):
    """The steps of each call that together run exactly `steps` steps."""
    return [steps_per_call] * (steps // steps_per_call) + (
        [steps % steps_per_call] if steps % steps_per_call else [])


def time_evaluation(model_config, data_path, dtype, passes=3):
    """Images/second of each pass of the Evaluator over the test set."""
    net = model.build(model_config, compute_dtype=dtype)
    images, labels = cifar.load_split(data_path, cifar.CIFAR10, 'test')
    evaluator = Evaluator(net, cifar.pixel_mean(images))
    evaluator(pipeline.eval_batches(images, labels, 1000))           # trace once
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        metrics = evaluator(pipeline.eval_batches(images, labels, 1000))
        rates.append(metrics.num_examples / (time.perf_counter() - start))
    return rates, evaluator.traces


def time_keras(model_config, recipe, data_path, precision, timing):
    """Images/second of keras.Model.fit, one epoch a window, written as a Keras user would
    on a GPU: uint8 batches from tf.data, normalised and augmented by Keras's own
    preprocessing layers inside the model (on the device), XLA as Keras chooses it."""
    import keras

    from v2.tools import keras_nets
    keras_nets.set_precision(precision)
    try:
        images, labels = cifar.load_split(data_path, cifar.CIFAR10, 'train')
        net = keras_nets.compile_for(
            keras_nets.with_augmentation(keras_nets.network(model_config, recipe.weight_decay),
                                         cifar.pixel_mean(images), recipe.seed),
            recipe, jit_compile='auto')
        batches = pipeline.train_batches(images, labels, recipe.batch_size, 0, 0,
                                         timing.total_steps)
        ends = [time.perf_counter()]

        class Timer(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):       # logs are read: the device is done
                ends.append(time.perf_counter())

        net.fit(batches, epochs=timing.warmup_windows + timing.windows,
                steps_per_epoch=timing.steps, shuffle=False, verbose=0, callbacks=[Timer()])
        rates = [timing.steps * recipe.batch_size / (b - a) for a, b in zip(ends, ends[1:])]
        return timing.timed(rates), bool(net.jit_compile)
    finally:
        keras_nets.set_precision('float32')


def print_bound(bound, trainer_rate, gflops):
    """The conv-only bound and the conv ceiling, with the trainer's share of each."""
    print('\neach convolution alone, batch %d (ms per pass; GFLOP/s):' % bound.batch_size)
    for conv, count, passes in bound.rows:
        cells = ['%s %5.2f (%3.0f)' % (name, seconds * 1e3, conv.flops / seconds / 1e9)
                 if seconds else '%s     -      ' % name for name, seconds in passes.items()]
        print('  %3d x %-32s %s' % (count, conv.describe(), '   '.join(cells)))
    print('%-44s %.0f ms a step -> at most %.0f img/s; the trainer reaches %.0f%% of it'
          % ('convolutions alone (all three passes)', bound.step_seconds * 1e3,
             bound.images_per_second, 100 * trainer_rate / bound.images_per_second))
    print('%-44s %.0f GFLOP/s (%s); the trainer reaches %.0f%% of it'
          % ('conv ceiling (fastest pass above)', bound.fastest, bound.fastest_what,
             100 * trainer_rate * gflops / bound.fastest))


def main(argv):
    del argv
    model_config = flags.model_config()
    if model_config.dataset != 'cifar10':
        raise UserError('the benchmark reads CIFAR-10 files; drop --dataset')
    if FLAGS.distribution_strategy == 'multi_worker':
        raise UserError('--distribution_strategy=multi_worker: the benchmark times one machine; '
                        'run it with mirrored on one worker\'s GPUs')
    recipe = flags.recipe()
    timing = Timing(-(-FLAGS.warmup_steps // FLAGS.window_steps), FLAGS.windows,
                    FLAGS.window_steps)
    with tempfile.TemporaryDirectory() as folder:
        options = flags.run_options(model_config, ckpt_path=os.path.join(folder, 'ckpt'),
                                    log_path=os.path.join(folder, 'logs'))
        setup = loop.set_up(model_config, recipe, options, print)     # the trainer's own
        macs = model.multiply_adds(model.build(model_config))
        gflops = 6 * macs / 1e9
        print('device: %s' % ', '.join(str(d) for d in setup.used))
        print('%s, batch %d, %s (%s compute), XLA %s, layout optimizer %s, %d step(s) per call; '
              '%d warm-up steps, then %d windows of %d steps'
              % (model_config.describe(), recipe.batch_size, recipe.precision, setup.dtype.name,
                 'on' if setup.jit else 'off', 'on' if setup.layout_optimizer else 'off',
                 FLAGS.steps_per_call,
                 timing.warmup_windows * timing.steps, timing.windows, timing.steps))
        print('forward: %.1f M multiply-adds per image (convolutions and linear layer); a '
              'training image costs %.3f GFLOP (x2 per multiply-add, x3 for forward + backward)'
              % (macs / 1e6, gflops))
        try:
            return measure(model_config, recipe, options, setup, timing, folder, macs)
        except memory.OOM as e:
            raise memory.out_of_memory(e, doing='timing', network=model_config.describe(),
                                       batch_size=recipe.batch_size,
                                       precision=recipe.precision, used=setup.used) from None


def measure(model_config, recipe, options, setup, timing, folder, macs):
    """The measurements and their table, once the settings are printed (macs: the net's
    multiply-adds per image)."""
    gflops, dtype = 6 * macs / 1e9, setup.dtype
    data_path = FLAGS.data_path
    if not data_path:
        data_path = os.path.join(folder, 'data')
        os.makedirs(data_path)
        write_random_cifar10(data_path)
    if FLAGS.rss_steps:
        steps = sorted(int(s) for s in FLAGS.rss_steps)
        marks = memory_over_steps(model_config, recipe, options, data_path, steps)
        for step in steps:
            print('resident memory after step %6d: %8.1f MiB' % (step, marks[step]))
        print('growth from step %d to %d: %+.1f MiB' % (steps[0], steps[-1],
                                                       marks[steps[-1]] - marks[steps[0]]))
        return 0
    trainer = time_trainer(model_config, recipe, options, data_path, timing)
    memory = time_in_memory_step(model_config, recipe, options, setup, timing)
    devices.set_layout_optimizer(True)   # the evaluator's and Keras's: TensorFlow's default
    evaluation, traces = time_evaluation(model_config, data_path, dtype)
    rss = peak_rss_mib()
    bound = (conv_timing.training_bound(model.build(model_config, compute_dtype=dtype),
                                        recipe.batch_size) if FLAGS.conv_bound else None)
    print('\n%-44s %s' % ('', 'images/s: median  (min, max)'))
    print('%-44s %s   %.0f GFLOP/s' % ('trainer (real pipeline, summaries)',
                                      describe(trainer), statistics.median(trainer) * gflops))
    print('%-44s %s   %.0f GFLOP/s' % ('same step, one in-memory batch', describe(memory),
                                      statistics.median(memory) * gflops))
    print('%-44s %.1f%% of the step time' % (
        'input pipeline cost',
        100 * max(0.0, 1 - statistics.median(trainer) / statistics.median(memory))))
    print('%-44s %s   %.0f GFLOP/s  (%d trace)' % (
        'evaluation, batches of 1000', describe(evaluation),
        statistics.median(evaluation) * 2 * macs / 1e9, traces))
    print('%-44s %.0f MiB' % ('peak resident memory (trainer + evaluation)', rss))
    if bound:
        print_bound(bound, statistics.median(trainer), gflops)
    if FLAGS.keras:
        if (model_config.model != 'resnet' or model_config.bottleneck
                or model_config.shortcut_type not in ('A', 'A_subsample')):
            print('Keras baseline: written for the basic-unit CIFAR ResNets with option A')
            return 0
        keras_precision = precision_lib.compute_dtype(   # gated per device, as ours
            FLAGS.keras_precision or recipe.precision, setup.used, warn=lambda line: None).name
        keras_rates, keras_jit = time_keras(model_config, recipe, data_path, keras_precision,
                                            timing)
        print('%-44s %s   %.0f GFLOP/s' % ('Keras 3 model.fit, %s%s'
                                          % (keras_precision, ', XLA' if keras_jit else ''),
                                          describe(keras_rates),
                                          statistics.median(keras_rates) * gflops))
        print('%-44s %.2fx' % ('trainer / Keras',
                               statistics.median(trainer) / statistics.median(keras_rates)))
    return 0


def run():
    """The console entry point and python -m."""
    app.run(main, flags.BENCHMARK)


if __name__ == '__main__':
    run()
