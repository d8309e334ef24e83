"""What a built ResNet is made of, read from the network itself, for the architecture figure.

`describe(config)` builds the network, runs one image through it, and returns a
JSON-ready dict: the parts (stem, stages, pooling, linear) with output shapes and
parameter counts, and for the first unit of each stage the ops of its residual
branch and of its shortcut, in the order TensorFlow runs them. The op lists come
from tracing the unit into a graph and walking back from its addition, so the
figure shows what the code does, not what a comment says it does.
"""

import tensorflow as tf

from v2.nets.model import build, count_parameters, inference_graph

# Graph ops worth drawing; reads, casts, assignments and shape plumbing are left out.
_DRAWN = {'Conv2D', 'FusedBatchNormV3', 'Relu', 'AvgPool', 'Pad', 'StridedSlice', 'AddV2',
          'MatMul'}


def describe(config, image_size=32):
    """Parts and unit anatomy of the network `config` describes (see the module docstring)."""
    net = build(config, seed=0)
    trace = []
    net(tf.zeros([1, image_size, image_size, 3]), training=False, trace=trace)
    parts = []
    for (name, shape), (_, modules) in zip(trace, net.parts()):
        parts.append({'name': name, 'shape': list(shape[1:]),
                      'parameters': count_parameters(modules),
                      'units': len(modules) if name.startswith('stage') else 0})
    units = []
    x = tf.zeros([1] + parts[0]['shape'])
    for s, stage in enumerate(getattr(net, 'stages', [])):
        units.append(dict(unit_ops(stage[0], x), stage=s + 1,
                          input_shape=list(x.shape[1:])))
        for unit in stage:
            x = unit(x, training=False)
    return {'name': config.describe(), 'config': config.to_json(),
            'parameters': count_parameters(net), 'parts': parts, 'units': units}


def unit_ops(unit, x):
    """{'shared', 'branch', 'shortcut', 'after'}: one unit's ops as short labels.

    'shared' holds ops both paths use before they part (the pre-activation the
    first unit shares), 'after' the ops on the sum (the post-activation ReLU); an
    empty 'shortcut' is the identity. A unit without a shortcut (the plain net) has
    everything in 'branch'.
    """
    graph = inference_graph(unit, x.shape, x.dtype)
    ops = graph.get_operations()
    order = {op: i for i, op in enumerate(ops)}
    joins = [op for op in ops if op.type == 'AddV2' and _is_unit_join(op)]
    if not joins:
        return {'residual': False, 'shared': [], 'branch': _labels(ops), 'shortcut': [],
                'after': []}
    join = joins[-1]
    branch, shortcut = (_ancestors(t.op) for t in join.inputs)
    shared = branch & shortcut
    if len(branch - shared) < len(shortcut - shared):    # the residual branch is the longer
        branch, shortcut = shortcut, branch
    pick = lambda s: _labels(sorted(s, key=order.get))   # noqa: E731
    return {'residual': True, 'shared': pick(shared), 'branch': pick(branch - shared),
            'shortcut': pick(shortcut - shared), 'after': _labels(ops[order[join] + 1:])}


def _is_unit_join(op):
    """An addition of two 4-D tensors (not the arithmetic inside batch norm or pooling)."""
    return all(t.shape.rank == 4 for t in op.inputs)


def _ancestors(op):
    seen, stack = set(), [op]
    while stack:
        current = stack.pop()
        if current in seen:
            continue
        seen.add(current)
        stack.extend(t.op for t in current.inputs)
    return seen


def _labels(ops):
    return [label for label in (_label(op) for op in ops if op.type in _DRAWN) if label]


def _label(op):
    if op.type == 'Conv2D':
        k_h, k_w, c_in, c_out = op.inputs[1].shape
        stride = op.get_attr('strides')[1]
        return 'conv %dx%d, %d%s' % (k_h, k_w, c_out, ', /%d' % stride if stride > 1 else '')
    if op.type == 'FusedBatchNormV3':
        return 'BN'
    if op.type == 'Relu':
        return 'ReLU'
    if op.type == 'AvgPool':
        size, stride = op.get_attr('ksize')[1], op.get_attr('strides')[1]
        return 'avg pool %dx%d, /%d' % (size, size, stride)
    if op.type == 'StridedSlice':                  # x[:, ::s, ::s, :], the paper's option A
        in_size, out_size = op.inputs[0].shape[1], op.outputs[0].shape[1]
        if op.outputs[0].shape.rank == 4 and in_size != out_size:
            return 'subsample /%d' % (in_size // out_size)
        return ''
    if op.type == 'Pad':
        c_in, c_out = op.inputs[0].shape[-1], op.outputs[0].shape[-1]
        return 'zero-pad channels %d->%d' % (c_in, c_out) if c_in != c_out else ''
    if op.type == 'AddV2':
        return ''
    return op.type
