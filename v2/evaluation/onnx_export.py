"""The SavedModel as ONNX: converted by tf2onnx, checked by onnxruntime on the test images.

ONNX is what most serving stacks outside TensorFlow load. The file takes the same uint8
images [N, 32, 32, 3] as the SavedModel and returns the same `probabilities` and
`classes`, the mean subtraction built in. Both packages are optional (`pip install
.[onnx]`); tf2onnx converts on the TensorFlow versions this project supports with
onnx before 1.18 (later onnx needs a newer ml_dtypes than TensorFlow 2.16 allows).
"""

import os

import numpy as np
import tensorflow as tf

from v2.data import cifar
from v2.errors import UserError
from v2.runtime import devices

OPSET = 17
# At most this share of the test images classed otherwise than by the SavedModel, and at
# most this difference in any probability: the same float32 arithmetic in another order.
BOUNDS = (0.001, 1e-4)


def converter():
    """(tf2onnx, onnxruntime), or a one-line refusal naming what to install."""
    try:
        import onnxruntime
        import tf2onnx
    except ImportError as e:
        raise UserError('onnx: the ONNX export needs tf2onnx and onnxruntime (pip install '
                        '.[onnx]): %s' % e, settings=('onnx',)) from None
    return tf2onnx, onnxruntime


def export_onnx(export_dir, saved, *, data_path, out=print):
    """Writes <export_dir>/model.onnx from the SavedModel there and checks it on the test set:
    top-1 agreement and the largest probability difference against the SavedModel (in
    IEEE float32), within BOUNDS, or the file is removed and the run says why."""
    tf2onnx, onnxruntime = converter()
    path = os.path.join(export_dir, 'model.onnx')
    serving = tf.saved_model.load(export_dir)
    spec = [tf.TensorSpec([None, cifar.IMAGE_SIZE, cifar.IMAGE_SIZE, cifar.CHANNELS], tf.uint8,
                          name='images')]
    try:
        tf2onnx.convert.from_function(serving.serve, input_signature=spec, opset=OPSET,
                                      output_path=path)
    except Exception as e:                 # noqa: BLE001 (the converter's own errors vary)
        if os.path.exists(path):
            os.remove(path)
        raise UserError('onnx: tf2onnx %s could not convert %s: %s' % (
            tf2onnx.__version__, export_dir, str(e).strip().splitlines()[0][:300]),
            settings=('onnx',)) from None
    spec = cifar.spec_of(saved.config.dataset, data_path, saved.config.num_classes)
    images, labels = (t.numpy() for t in cifar.load_split(data_path, spec, 'test'))
    signature = serving.signatures['serving_default']
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    names = [o.name for o in session.get_outputs()]
    ours, theirs = [], []
    with devices.ieee_float32():
        for i in range(0, len(images), 500):
            ours.append(signature(images=tf.constant(images[i:i + 500]))['probabilities'].numpy())
            theirs.append(dict(zip(names, session.run(None, {'images': images[i:i + 500]})))
                          ['probabilities'])
    ours, theirs = np.concatenate(ours), np.concatenate(theirs)
    changed = float(np.mean(ours.argmax(-1) != theirs.argmax(-1)))
    largest = float(np.abs(ours - theirs).max())
    accuracy = float(np.mean(theirs.argmax(-1) == labels))
    out('%s: %.2f MB (tf2onnx %s, opset %d), test accuracy %.2f%%, top-1 agreement with the '
        'SavedModel %.2f%% of the %d test images, largest probability difference %.1e'
        % (path, os.path.getsize(path) / 1e6, tf2onnx.__version__, OPSET, 100 * accuracy,
           100 * (1 - changed), len(images), largest))
    if changed > BOUNDS[0] or largest > BOUNDS[1]:
        os.remove(path)
        raise UserError('%s strays from the SavedModel beyond the bounds (%.1f%% of classes, '
                        'a probability difference of %g); removed it'
                        % (path, 100 * BOUNDS[0], BOUNDS[1]), settings=('onnx',))
    return dict(path=path, bytes=os.path.getsize(path), accuracy=accuracy, changed=changed,
                largest_difference=largest)
