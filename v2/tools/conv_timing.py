"""The convolutions of a network, each timed alone: the bound a training step cannot beat.

A training step runs every convolution three times: forward, backward to its input
(not for the first convolution, whose input is the image) and backward to its
filter. Timing each of the net's convolution shapes in isolation, at the step's
batch size and compute precision, gives

  - the fastest rate this machine reaches on the net's own convolutions (the
    "conv ceiling" the benchmark compares the trainer against), and
  - the time one step would take if everything except the convolutions were free,
    hence the most images/second any implementation using TensorFlow's kernels
    could reach here.

The shapes come from the traced forward graph, so this works for every network
the trainer builds (ResNets of both papers, bottlenecks, wide nets, VGG).
"""

import collections
import dataclasses
import statistics
import time

import tensorflow as tf

from v2.nets.model import inference_graph

_ATTRS = ('strides', 'padding', 'explicit_paddings', 'dilations', 'data_format')


@dataclasses.dataclass(frozen=True)
class Conv:
    """One convolution of the forward graph (shapes include the batch)."""
    input_shape: tuple
    filter_shape: tuple
    output_shape: tuple
    attrs: tuple            # (name, value) pairs of the Conv2D attributes above
    dtype: tf.DType
    image_input: bool       # its input is the image: no gradient to the input

    @property
    def flops(self):
        """2 x multiply-accumulates of one pass over the batch."""
        kh, kw, cin, _ = self.filter_shape
        n, h, w, cout = self.output_shape
        return 2 * n * h * w * cout * kh * kw * cin

    def describe(self):
        kh, kw, cin, cout = self.filter_shape
        stride = dict(self.attrs)['strides'][1]
        return '%dx%d conv %d->%d on %dx%d%s' % (kh, kw, cin, cout, self.input_shape[1],
                                                self.input_shape[2],
                                                ', /%d' % stride if stride > 1 else '')


def _reads_variables(tensor):
    """Whether any variable feeds this tensor (the image does not depend on one)."""
    seen, todo = set(), [tensor.op]
    while todo:
        op = todo.pop()
        if op.type in ('ReadVariableOp', 'VarHandleOp'):
            return True
        if op.name not in seen:
            seen.add(op.name)
            todo.extend(t.op for t in op.inputs)
    return False


def _hashable(value):
    return tuple(value) if isinstance(value, list) else value


def census(net, batch_size, image_shape=(32, 32, 3)):
    """Counter of the Conv2D ops of net's forward pass at this batch size."""
    graph = inference_graph(net, [batch_size, *image_shape])
    convs = collections.Counter()
    for op in graph.get_operations():
        if op.type != 'Conv2D':
            continue
        convs[Conv(tuple(op.inputs[0].shape.as_list()), tuple(op.inputs[1].shape.as_list()),
                   tuple(op.outputs[0].shape.as_list()),
                   tuple((a, _hashable(op.get_attr(a))) for a in _ATTRS),
                   op.inputs[0].dtype, not _reads_variables(op.inputs[0]))] += 1
    return convs


def looped(op, calls):
    """A traced function that runs op(*args) `calls` times in one graph loop, returning the
    last result: one call from Python, so that on a GPU the time is the kernels', not the
    launches'. The iterations run one at a time (independent ones would overlap), and
    grappler moves no loop-invariant op out of a loop by default."""
    @tf.function
    def run(*args):
        def body(i, _):
            return i + 1, op(*args)
        first = op(*args)
        return tf.while_loop(lambda i, _: i < calls, body, (tf.constant(1), first),
                             parallel_iterations=1)[1]     # one after the other, as in a step
    return run


def _seconds_per_call(op, args, calls, repeats):
    """Median over `repeats` of the time of one op, run `calls` times in one traced loop."""
    fn = looped(op, calls)
    fn(*args).numpy()                                  # trace and warm the primitive cache
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(*args).numpy()                              # waits for the device
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def time_passes(conv, calls=10, repeats=3, seed=0):
    """Seconds of the forward, input-gradient and filter-gradient pass of one conv, each
    the mean of `calls` runs inside one traced loop (median of `repeats` loops)."""
    attrs = dict(conv.attrs)
    rng = tf.random.Generator.from_seed(seed)
    x = tf.cast(rng.normal(conv.input_shape), conv.dtype)
    w = tf.cast(rng.normal(conv.filter_shape), conv.dtype)
    dy = tf.cast(rng.normal(conv.output_shape), conv.dtype)
    def forward(x, w):
        return tf.raw_ops.Conv2D(input=x, filter=w, **attrs)

    def to_input(w, dy):
        return tf.raw_ops.Conv2DBackpropInput(input_sizes=conv.input_shape, filter=w,
                                              out_backprop=dy, **attrs)

    def to_filter(x, dy):
        return tf.raw_ops.Conv2DBackpropFilter(input=x, filter_sizes=conv.filter_shape,
                                               out_backprop=dy, **attrs)
    return {'forward': _seconds_per_call(forward, (x, w), calls, repeats),
            'input': 0.0 if conv.image_input else _seconds_per_call(to_input, (w, dy), calls,
                                                                     repeats),
            'filter': _seconds_per_call(to_filter, (x, dy), calls, repeats)}


@dataclasses.dataclass
class Bound:
    """What training_bound measured: the conv-only step time and the fastest pass."""
    step_seconds: float      # every conv pass of one training step, each run alone
    batch_size: int
    fastest: float           # the best GFLOP/s of any pass of any of the net's convs
    fastest_what: str
    rows: list               # (conv, count, {pass: seconds})

    @property
    def images_per_second(self):
        return self.batch_size / self.step_seconds


def training_bound(net, batch_size, calls=10, repeats=3):
    """Time every distinct conv of net; sum them as one training step would run them."""
    rows, total, fastest, fastest_what = [], 0.0, 0.0, ''
    for conv, count in census(net, batch_size).items():
        passes = time_passes(conv, calls, repeats)
        rows.append((conv, count, passes))
        total += count * sum(passes.values())
        for name, seconds in passes.items():
            if seconds and conv.flops / seconds / 1e9 > fastest:
                fastest = conv.flops / seconds / 1e9
                fastest_what = '%s, %s' % (conv.describe(), name)
    return Bound(total, batch_size, fastest, fastest_what, rows)
