"""Training and evaluation throughput of the real trainer, beside a Keras 3 baseline.

  python -m v2.benchmark --num_layers=20 --precision=float32

It takes the trainer's flags (network, --batch_size, --precision,
--log_per_iterations, --jit_compile, ...) plus the timing flags below.

Trains through train.train() itself (binary files -> tf.data pipeline with
augmentation -> traced step -> summaries and checkpoints at --log_per_iterations),
times every step, drops the warm-up, and reports the median, min and max
images/second over several timing windows, the achieved GFLOP/s and the peak
resident memory. In the same run it times the same step on one in-memory batch
(the input pipeline's cost), evaluation in batches, and a straightforward Keras 3
`model.fit` of the same network on the same batches: the baseline a user would
otherwise write. It also times each of the net's convolutions alone (v2/conv_timing.py):
the fastest rate this machine reaches on them (the conv ceiling) and the images/second
a step made only of convolutions would reach (the bound no step here can beat).
Without --data_path it writes random CIFAR-10 files of the full size (50,000 +
10,000 records) to a temporary folder.
"""

import dataclasses
import os
import resource
import statistics
import tempfile
import time

import numpy as np
from absl import flags

from v2 import conv_timing, data, model, options, precision as precision_lib, schedule, train
from v2.errors import UserError
from v2.evaluate import Evaluator
from v2.optimizer import Momentum
from v2.train_options import configs_from_flags

import tensorflow as tf  # noqa: E402  (after v2, which quiets its start-up)

flags.DEFINE_integer('warmup_steps', 20, 'Steps run before timing (tracing, caches).',
                     lower_bound=1)
flags.DEFINE_integer('windows', 5, 'Timing windows.', lower_bound=1)
flags.DEFINE_integer('window_steps', 30, 'Steps in each timing window.', lower_bound=1)
flags.DEFINE_boolean('keras', True, 'Also time a Keras 3 model.fit of the same network.')
flags.DEFINE_enum('keras_precision', None, ['float32', 'bfloat16', 'float16'],
                  'Precision of the Keras baseline (mixed_* policies); default: --precision. '
                  'E.g. --precision=bfloat16 --keras_precision=float32 compares bf16 training '
                  'against the fp32 Keras fit a user would otherwise run.')
flags.DEFINE_boolean('conv_bound', True, 'Also time each convolution of the net alone: the '
                     'conv ceiling and the conv-only bound on images/second.')
flags.DEFINE_list('rss_steps', [], 'Instead of timing: train this many steps and print the '
                  'resident memory at each listed step (e.g. 500,3000), to show it does not grow.')

FLAGS = flags.FLAGS


def write_random_cifar10(folder, train_records=50000, test_records=10000, seed=0):
    """Random images and labels in the official CIFAR-10 binary layout."""
    rng = np.random.default_rng(seed)
    names = [(n, train_records // 5) for n in data.CIFAR10.train_files]
    names += [(data.CIFAR10.test_files[0], test_records)]
    for name, count in names:
        records = rng.integers(0, 256, size=(count, data.CIFAR10.record_bytes), dtype=np.uint8)
        records[:, 0] %= 10
        records.tofile(os.path.join(folder, name))


def forward_macs(net):
    """Multiply-accumulates of one image's forward pass, counted by TensorFlow's profiler."""
    graph = model.inference_graph(net, [1, 32, 32, 3])
    options_ = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
    options_['output'] = 'none'
    level = tf.get_logger().level
    tf.get_logger().setLevel('ERROR')
    try:
        flops = tf.compat.v1.profiler.profile(graph=graph, options=options_).total_float_ops
    finally:
        tf.get_logger().setLevel(level)
    return flops // 2


def window_rates(times, batch_size, warmup, windows, steps):
    """Images/second of each timing window, from the end time of every step."""
    rates = []
    for w in range(windows):
        start = times[warmup + w * steps - 1]
        end = times[warmup + (w + 1) * steps - 1]
        rates.append(steps * batch_size / (end - start))
    return rates


def current_rss_mib():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2 ** 20


def memory_over_steps(model_config, config, data_path, folder, steps):
    """Resident memory (MiB) after each of `steps` in one real training run."""
    marks = {}
    config = dataclasses.replace(config, ckpt_path=os.path.join(folder, 'ckpt'),
                                 log_path=os.path.join(folder, 'logs'), num_iterations=max(steps))

    def sample(step):
        if step in steps:
            marks[step] = current_rss_mib()
    train.train(model_config, config, data_path, out=lambda line: None, on_step=sample)
    return marks


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def describe(rates):
    return '%7.0f  (min %.0f, max %.0f)' % (statistics.median(rates), min(rates), max(rates))


def time_trainer(model_config, config, data_path, folder, total_steps):
    """Step end times of a real train.train() run with the trainer's flags."""
    times = []
    config = dataclasses.replace(config, ckpt_path=os.path.join(folder, 'ckpt'),
                                 log_path=os.path.join(folder, 'logs'),
                                 num_iterations=total_steps)
    train.train(model_config, config, data_path, out=lambda line: None,
                on_step=lambda step: times.append(time.perf_counter()))
    return times


def time_in_memory_step(model_config, precision, total_steps):
    """Step end times of the same traced step fed one constant batch (no input pipeline)."""
    net = model.build(model_config, compute_dtype=precision_lib.compute_dtype(precision))
    optimizer = Momentum(net.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    loss_scale = precision_lib.DynamicLossScale() if precision == 'float16' else None
    train_step = train.make_train_step(net, optimizer, schedule.Schedule(), step, 1e-4,
                                       loss_scale, FLAGS.jit_compile)
    images = tf.random.normal([FLAGS.batch_size, 32, 32, 3])
    labels = tf.random.uniform([FLAGS.batch_size], 0, model_config.num_classes, tf.int32)
    times = []
    for _ in range(total_steps):
        float(train_step(images, labels)['loss'])
        times.append(time.perf_counter())
    return times


def time_evaluation(model_config, data_path, precision, passes=3):
    """Images/second of each pass of the Evaluator over the test set."""
    net = model.build(model_config, compute_dtype=precision_lib.compute_dtype(precision))
    images, labels = data.load_split(data_path, data.CIFAR10, 'test')
    mean = data.pixel_mean(images)
    evaluator = Evaluator(net)
    evaluator(data.eval_batches(images, labels, mean, 1000))           # trace once
    rates = []
    for _ in range(passes):
        start = time.perf_counter()
        metrics = evaluator(data.eval_batches(images, labels, mean, 1000))
        rates.append(metrics.num_examples / (time.perf_counter() - start))
    return rates, evaluator.traces


def keras_network(model_config, weight_decay=1e-4):
    """The same pre-activation CIFAR ResNet written with Keras 3 layers, as a user would."""
    import keras
    from keras import layers as L
    n = model.units_per_stage(model_config)
    l2 = keras.regularizers.L2(weight_decay / 2)      # our decay: wd * ||w||^2 / 2

    def conv(x, width, stride):
        return L.Conv2D(width, 3, stride, padding='same', use_bias=False,
                        kernel_initializer='he_normal', kernel_regularizer=l2)(x)

    def bn_relu(x):
        return L.ReLU()(L.BatchNormalization(momentum=0.9, epsilon=1e-5)(x))

    def pad_channels(x, extra):
        return L.Lambda(lambda t, e=extra: keras.ops.pad(
            t, [[0, 0], [0, 0], [0, 0], [e // 2, e - e // 2]]))(x)

    inputs = keras.Input((32, 32, 3))
    x = conv(inputs, 16, 1)
    channels = 16
    for s, width in enumerate(model.CIFAR_WIDTHS):
        for u in range(n):
            stride = 2 if (s > 0 and u == 0) else 1
            preact = bn_relu(x)
            shortcut = preact if (s == 0 and u == 0) else x
            y = conv(bn_relu(conv(preact, width, stride)), width, 1)
            if stride > 1:
                shortcut = L.AveragePooling2D(2)(shortcut)
            if width != channels:
                shortcut = pad_channels(shortcut, width - channels)
            x = L.Add()([y, shortcut]) if model_config.shortcut_connections else y
            channels = width
    x = L.GlobalAveragePooling2D()(bn_relu(x))
    outputs = L.Dense(model_config.num_classes, kernel_regularizer=l2, dtype='float32')(x)
    return keras.Model(inputs, outputs)


def time_keras(model_config, data_path, precision, total_steps):
    """Step end times of keras.Model.fit on the trainer's own batches."""
    import keras
    keras.mixed_precision.set_global_policy(
        'mixed_bfloat16' if precision == 'bfloat16' else
        'mixed_float16' if precision == 'float16' else 'float32')
    net = keras_network(model_config)
    net.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=['accuracy'])
    images, labels = data.load_split(data_path, data.CIFAR10, 'train')
    batches = data.train_batches(images, labels, data.pixel_mean(images), FLAGS.batch_size, 0, 0,
                                 total_steps)
    times = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            times.append(time.perf_counter())

    net.fit(batches, epochs=1, steps_per_epoch=total_steps, verbose=0, shuffle=False,
            callbacks=[Timer()])
    keras.mixed_precision.set_global_policy('float32')
    return times, net.jit_compile


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
    model_config, config = configs_from_flags()
    precision = FLAGS.precision
    dtype = precision_lib.compute_dtype(precision)
    total = FLAGS.warmup_steps + FLAGS.windows * FLAGS.window_steps
    macs = forward_macs(model.build(model_config))
    print('%s, batch %d, %s (%s compute); %d warm-up steps, then %d windows of %d steps'
          % (model_config.describe(), FLAGS.batch_size, precision, dtype.name,
             FLAGS.warmup_steps, FLAGS.windows, FLAGS.window_steps))
    print('forward: %.1f M multiply-accumulates per image; a training image costs %.3f GFLOP '
          '(x2 per MAC, x3 for forward + backward)' % (macs / 1e6, 6 * macs / 1e9))
    with tempfile.TemporaryDirectory() as folder:
        data_path = FLAGS.data_path
        if not data_path:
            data_path = os.path.join(folder, 'data')
            os.makedirs(data_path)
            write_random_cifar10(data_path)
        if model_config.dataset != 'cifar10':
            raise UserError('the benchmark reads CIFAR-10 files; drop --dataset')
        if FLAGS.rss_steps:
            steps = sorted(int(s) for s in FLAGS.rss_steps)
            marks = memory_over_steps(model_config, config, data_path, folder, steps)
            for step in steps:
                print('resident memory after step %6d: %8.1f MiB' % (step, marks[step]))
            print('growth from step %d to %d: %+.1f MiB' % (steps[0], steps[-1],
                                                           marks[steps[-1]] - marks[steps[0]]))
            return 0
        b = FLAGS.batch_size
        trainer = window_rates(time_trainer(model_config, config, data_path, folder, total),
                               b, FLAGS.warmup_steps, FLAGS.windows, FLAGS.window_steps)
        memory = window_rates(time_in_memory_step(model_config, precision, total), b,
                              FLAGS.warmup_steps, FLAGS.windows, FLAGS.window_steps)
        evaluation, traces = time_evaluation(model_config, data_path, precision)
        rss = peak_rss_mib()
        gflops = 6 * macs / 1e9
        bound = conv_timing.training_bound(model.build(model_config, compute_dtype=dtype), b) \
            if FLAGS.conv_bound else None
        print('\n%-44s %s' % ('', 'images/s: median  (min, max)'))
        print('%-44s %s   %.0f GFLOP/s' % ('trainer (real pipeline, summaries, ckpts)',
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
            if model_config.model != 'resnet' or model_config.bottleneck or \
                    model_config.resnet_version != 2 or model_config.shortcut_type != 'A':
                print('Keras baseline: written for the default pre-activation ResNet only')
                return 0
            keras_precision = FLAGS.keras_precision or precision
            times, jit = time_keras(model_config, data_path, keras_precision, total)
            keras_rates = window_rates(times, b, FLAGS.warmup_steps, FLAGS.windows,
                                       FLAGS.window_steps)
            print('%-44s %s   %.0f GFLOP/s' % ('Keras 3 model.fit, %s%s'
                                              % (keras_precision, ', XLA' if jit else ''),
                                              describe(keras_rates),
                                              statistics.median(keras_rates) * gflops))
            print('%-44s %.2fx' % ('trainer / Keras',
                                   statistics.median(trainer) / statistics.median(keras_rates)))
    return 0


if __name__ == '__main__':
    options.run(main)
