"""How far a network's confidence can be trusted: calibration figures and temperature scaling.

From the logits of a whole evaluation set (numpy, on the host: 10,000 x K floats):

  ECE    expected calibration error (Naeini et al. 2015; Guo et al. 2017): the
         confidences (the top softmax probability) fall into 15 equal-width bins
         (0, 1/15], (1/15, 2/15], ..., (14/15, 1]; ECE is the image-weighted mean over the
         bins of |accuracy - mean confidence|. An empty bin weighs nothing.
  NLL    the mean negative log-likelihood of the true class (= the cross-entropy).
  Brier  the multi-class Brier score (Brier 1950): the mean over images of the summed
         squared differences between the softmax probabilities and the one-hot label
         (0 is perfect, 2 the worst).

Temperature scaling (Guo et al. 2017) divides the logits by one scalar T > 0, fitted
to minimise the NLL of held-out validation images, never the test set. It leaves every
prediction, hence the accuracy, unchanged.
"""

import dataclasses

import numpy as np

BINS = 15
LOWEST, HIGHEST = 1e-3, 1e3        # the temperatures fit_temperature searches between


def softmax(logits):
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits, labels):
    """The mean negative log-likelihood of `labels` under softmax(logits), in float64."""
    z = np.asarray(logits, np.float64)
    top = z.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(z - top).sum(axis=1)) + top[:, 0]
    return float(np.mean(log_norm - z[np.arange(len(z)), labels]))


@dataclasses.dataclass
class Calibration:
    """The calibration figures of one set of logits, and its reliability diagram's bins."""
    ece: float
    nll: float
    brier: float
    bin_count: list[int]            # images whose confidence falls into each bin
    bin_confidence: list[float]     # their mean confidence (0 for an empty bin)
    bin_accuracy: list[float]       # their accuracy (0 for an empty bin)
    temperature: float = 1.0

    @classmethod
    def of(cls, logits, labels, temperature=1.0, bins=BINS):
        logits = np.asarray(logits, np.float64) / temperature
        labels = np.asarray(labels, np.int64)
        p = softmax(logits)
        confidence = p.max(axis=1)
        correct = (p.argmax(axis=1) == labels).astype(np.float64)
        # Right-closed bins (m-1)/M < c <= m/M; a confidence is never 0.
        index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
        count = np.bincount(index, minlength=bins)
        filled = np.maximum(count, 1)
        mean_confidence = np.bincount(index, confidence, bins) / filled
        accuracy = np.bincount(index, correct, bins) / filled
        ece = float(np.sum(count * np.abs(accuracy - mean_confidence)) / len(labels))
        onehot = np.eye(p.shape[1])[labels]
        return cls(ece=ece, nll=nll(logits, labels),
                   brier=float(np.mean(np.sum((p - onehot) ** 2, axis=1))),
                   bin_count=count.tolist(), bin_confidence=mean_confidence.tolist(),
                   bin_accuracy=accuracy.tolist(), temperature=float(temperature))

    def to_dict(self):
        return dict(dataclasses.asdict(self), bins=len(self.bin_count))


def at_bound(temperature):
    """Whether a fitted temperature is one of the search's bounds (the fit went beyond it)."""
    return not LOWEST * 1.001 < temperature < HIGHEST / 1.001


def fit_temperature(logits, labels):
    """The temperature T minimising the NLL of softmax(logits / T) on these images.

    The NLL is convex in 1/T (the log-sum-exp of logits linear in 1/T, less a linear
    term), so its derivative in 1/T, mean(E_p[z] - z_label), rises through zero once:
    bisection on its sign, in log space over 1/T in [1e-3, 1e3], finds the minimum to
    within float64 precision. Returns the bound where the minimum lies beyond it: a net
    right on every image wants T -> 0, one no better than chance T -> infinity.
    """
    z = np.asarray(logits, np.float64)
    labels = np.asarray(labels, np.int64)
    z_label = z[np.arange(len(z)), labels]

    def slope(beta):
        return float(np.mean(np.sum(softmax(beta * z) * z, axis=1) - z_label))

    low, high = np.log(1 / HIGHEST), np.log(1 / LOWEST)
    if slope(np.exp(low)) >= 0:
        return float(np.exp(-low))
    if slope(np.exp(high)) <= 0:
        return float(np.exp(-high))
    for _ in range(100):
        middle = (low + high) / 2
        if slope(np.exp(middle)) < 0:
            low = middle
        else:
            high = middle
    return float(np.exp(-(low + high) / 2))
