"""Independent numpy versions of the nets' pieces, the oracles of the numeric tests.

Written from the papers' definitions, not from v2's code: convolutions padded by
(k-1)//2 on every side as Torch pads, batch norm with given statistics, the
option A shortcut, the units of He et al. 2015 and 2016.
"""

import numpy as np

EPSILON = 1e-5


def conv(x, kernel, stride=1):
    """x [N, H, W, C] (*) kernel [k, k, C, D], zero padding (k-1)//2 on every side."""
    k = kernel.shape[0]
    pad = (k - 1) // 2
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    out_h = (x.shape[1] + 2 * pad - k) // stride + 1
    out_w = (x.shape[2] + 2 * pad - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]), np.float64)
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            out[:, i, j] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return out


def batch_norm(x, gamma, beta, mean, variance):
    return gamma * (x - mean) / np.sqrt(variance + EPSILON) + beta


def batch_norm_training(x, gamma, beta):
    """Normalised with the batch's own statistics (biased variance)."""
    return batch_norm(x, gamma, beta, x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2)))


def relu(x):
    return np.maximum(x, 0.0)


def average_pool(x, size=2):
    n, h, w, c = x.shape
    return x.reshape(n, h // size, size, w // size, size, c).mean(axis=(2, 4))


def max_pool(x, size=2):
    n, h, w, c = x.shape
    return x.reshape(n, h // size, size, w // size, size, c).max(axis=(2, 4))


def option_a(x, out_channels, stride, pool=True):
    """He et al. 2015, option A: subsample (pool or stride), zero channels split evenly."""
    if stride > 1:
        x = average_pool(x, stride) if pool else x[:, ::stride, ::stride]
    extra = out_channels - x.shape[-1]
    return np.pad(x, [(0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)])


def bn_of(layer):
    """The evaluation-mode function of a v2 BatchNorm, from its variables."""
    values = [v.numpy() for v in (layer.gamma, layer.beta, layer.moving_mean,
                                  layer.moving_variance)]
    return lambda x: batch_norm(x, *values)


def preact_basic(x, unit):
    """He et al. 2016, Fig. 4(e), at evaluation: x + conv(relu(bn(conv(relu(bn(x))))))."""
    pre = relu(bn_of(unit.bn1)(x))
    y = conv(pre, unit.conv1.kernel.numpy(), unit.conv1.stride)
    y = conv(relu(bn_of(unit.bn2)(y)), unit.conv2.kernel.numpy())
    return y, pre


def postact_basic(x, unit):
    """He et al. 2015, Fig. 2, at evaluation: the branch before the addition and the ReLU."""
    y = relu(bn_of(unit.bn1)(conv(x, unit.conv1.kernel.numpy(), unit.conv1.stride)))
    return bn_of(unit.bn2)(conv(y, unit.conv2.kernel.numpy()))


def postact_bottleneck(x, unit):
    y = relu(bn_of(unit.bn1)(conv(x, unit.conv1.kernel.numpy())))
    y = relu(bn_of(unit.bn2)(conv(y, unit.conv2.kernel.numpy(), unit.conv2.stride)))
    return bn_of(unit.bn3)(conv(y, unit.conv3.kernel.numpy()))


def preact_bottleneck(x, unit):
    pre = relu(bn_of(unit.bn1)(x))
    y = relu(bn_of(unit.bn2)(conv(pre, unit.conv1.kernel.numpy())))
    y = relu(bn_of(unit.bn3)(conv(y, unit.conv2.kernel.numpy(), unit.conv2.stride)))
    return conv(y, unit.conv3.kernel.numpy()), pre


def log_softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    return logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))


def softmax_cross_entropy(logits, labels, smoothing=0.0):
    """Per-example cross-entropy against (smoothed) one-hot targets."""
    log_p = log_softmax(logits)
    k = logits.shape[1]
    targets = np.eye(k)[labels] * (1 - smoothing) + smoothing / k
    return -(targets * log_p).sum(axis=1)


def preact_resnet_logits(net, x):
    """He et al. 2016's pre-activation ResNet with option A shortcuts at evaluation, from
    its weights: stem conv, the units, final BN -> ReLU, global average pool, linear.
    x: mean-subtracted images [N, 32, 32, 3]."""
    x = conv(x, net.stem.kernel.numpy())
    for units in net.stages:
        for unit in units:
            branch, pre = preact_basic(x, unit)
            source = pre if unit.share_preact else x      # the first unit shares BN -> ReLU
            x = branch + option_a(source, branch.shape[-1], unit.conv1.stride)
    features = relu(bn_of(net.final_bn)(x)).mean(axis=(1, 2))
    return features @ net.fc.kernel.numpy() + net.fc.bias.numpy()


def calibration(logits, labels, bins=15):
    """(ECE, Brier) written out loop by loop: image i falls in bin m when
    m/bins < confidence_i <= (m+1)/bins; ECE = sum_m n_m/N |acc_m - conf_m|; Brier =
    mean_i sum_k (p_ik - [k == y_i])^2."""
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    ece = 0.0
    for m in range(bins):
        members = [i for i in range(len(p)) if m / bins < p[i].max() <= (m + 1) / bins]
        if members:
            accuracy = np.mean([p[i].argmax() == labels[i] for i in members])
            confidence = np.mean([p[i].max() for i in members])
            ece += len(members) / len(p) * abs(accuracy - confidence)
    brier = np.mean([sum((p[i, k] - (k == labels[i])) ** 2 for k in range(p.shape[1]))
                     for i in range(len(p))])
    return ece, brier


def weight_averages(initial, steps, decay):
    """The weight averages after len(steps) updates, written out from ema.py's definition:
    they start as the initial values, and after the update of step t (t = 0, 1, ...)
    average = d * average + (1 - d) * value, d = min(decay, (1 + t) / (10 + t)).
    initial: the values before step 0; steps[t]: the values after step t (lists of arrays)."""
    averages = [np.asarray(v, np.float64) for v in initial]
    for t, values in enumerate(steps):
        d = min(decay, (1 + t) / (10 + t))
        averages = [d * a + (1 - d) * np.asarray(v, np.float64) for a, v in zip(averages, values)]
    return averages
