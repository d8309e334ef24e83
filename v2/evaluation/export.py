"""A trained network for serving: a SavedModel that needs nothing of ours, and image files.

The SavedModel's `serving_default` signature takes uint8 images [N, 32, 32, 3] (RGB,
as decoded from a PNG or JPEG) and returns `probabilities` [N, classes] and
`classes` [N]; the training-set mean subtraction is built in, and the network runs
with its batch-norm moving averages. Load it with tf.saved_model.load(D).
"""

import os
import warnings

import numpy as np
import tensorflow as tf

from v2.data import cifar, pipeline
from v2.errors import UserError
from v2.runtime import devices


class Serving(tf.Module):
    """The network, its pixel mean and its class names, with one serving function."""

    def __init__(self, net, pixel_mean, class_names):
        super().__init__(name='serving')
        self.net = net
        self.pixel_mean = tf.Variable(pixel_mean, trainable=False, name='pixel_mean')
        self.class_names = tf.Variable(list(class_names), trainable=False, name='class_names')

    @tf.function(input_signature=[tf.TensorSpec([None, cifar.IMAGE_SIZE, cifar.IMAGE_SIZE,
                                                 cifar.CHANNELS], tf.uint8, name='images')])
    def serve(self, images):
        logits = self.net(pipeline.normalize(images, self.pixel_mean), training=False)
        return {'probabilities': tf.nn.softmax(logits),
                'classes': tf.argmax(logits, axis=-1)}


def export_saved_model(serving, export_dir):
    """Writes a Serving module as a SavedModel; refuses a folder that already holds files."""
    if tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir):
        raise UserError('export_dir=%s is not empty; choose a new folder so that nothing is '
                        'overwritten' % export_dir, settings=('export_dir',))
    tf.saved_model.save(serving, export_dir, signatures={'serving_default': serving.serve})


def read_images(paths, *, out=print):
    """uint8 RGB images [N, 32, 32, 3] from PNG/JPEG/GIF/BMP files, resized where needed."""
    images = []
    for path in paths:
        try:
            raw = tf.io.read_file(path)
            image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError) as e:
            raise UserError('%s: not a readable image (%s)'
                            % (path, str(e).strip().splitlines()[0])) from None
        if image.shape[:2] != (cifar.IMAGE_SIZE, cifar.IMAGE_SIZE):
            out('note: %s is %dx%d; resized to 32x32 (the network sees 32x32 images)'
                % (path, image.shape[1], image.shape[0]))
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                image, [cifar.IMAGE_SIZE, cifar.IMAGE_SIZE], antialias=True)), 0, 255), tf.uint8)
        images.append(image)
    return tf.stack(images)


def predict_files(serving, paths, *, top=3, out=print):
    """Prints the most likely classes of each image file; returns the probabilities."""
    result = serving.serve(read_images(paths, out=out))
    probabilities = result['probabilities'].numpy()
    names = [n.decode() for n in serving.class_names.numpy()]
    for path, p in zip(paths, probabilities):
        best = np.argsort(-p)[:top]
        out('%s: %s' % (path, ', '.join('%s %.1f%%' % (names[k], 100 * p[k]) for k in best)))
    return probabilities


# --- TensorFlow Lite ---------------------------------------------------------------------------

TFLITE_KINDS = ('float32', 'float16', 'int8')
# How far a converted model may stray from the SavedModel on the test images: the share of
# images whose predicted class differs, and the change in accuracy (percentage points).
TFLITE_BOUNDS = {'float32': (0.001, 0.1), 'float16': (0.01, 0.5), 'int8': (0.05, 2.0)}


def tflite_bytes(saved_model_dir, kind, representative=None):
    """The SavedModel converted to TensorFlow Lite: float32, float16 weights, or int8.

    int8 is post-training quantization of weights and activations, calibrated on
    `representative` (uint8 training images [N, 32, 32, 3]); the model keeps its uint8
    input and float probabilities, and any op without an int8 kernel stays float.
    """
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_dir)
    if kind == 'float16':
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif kind == 'int8':
        images = np.asarray(representative)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([images[i:i + 1]] for i in range(len(images)))
    return converter.convert()


def tflite_runner(model_path):
    """The serving signature of a .tflite file, run by TensorFlow's own Lite interpreter."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')          # "deprecated in favour of ai_edge_litert"
        try:
            interpreter = tf.lite.Interpreter(model_path=model_path)
        except ValueError as e:
            raise UserError('%s: not a TensorFlow Lite model (%s)'
                            % (model_path, str(e).strip().splitlines()[0])) from None
    return interpreter.get_signature_runner('serving_default')


def tflite_predict(runner, images, batch=100):
    """Probabilities [N, classes] of uint8 images through a TFLite signature runner."""
    return np.concatenate([runner(images=np.asarray(images[i:i + batch]))['probabilities']
                           for i in range(0, len(images), batch)])


def export_tflite_files(export_dir, kinds, saved, *, data_path, out=print):
    """Writes <export_dir>/model_<kind>.tflite for each kind, each checked on the test images.

    Each is run on the test set beside the SavedModel (computed in IEEE float32, TF32
    off, as the interpreter computes): the share of images whose
    predicted class changes and the change in accuracy must stay within
    TFLITE_BOUNDS, or the file is removed and the run says why.
    """
    unknown = [k for k in kinds if k not in TFLITE_KINDS]
    if unknown:
        raise UserError('tflite=%s: expected some of %s'
                        % (','.join(kinds), ','.join(TFLITE_KINDS)), settings=('tflite',))
    spec = cifar.spec_of(saved.config.dataset, data_path, saved.config.num_classes)
    test_images, test_labels = (t.numpy() for t in cifar.load_split(data_path, spec, 'test'))
    train_images, _ = cifar.load_split(data_path, spec, 'train')
    order = np.random.default_rng(0).permutation(int(train_images.shape[0]))[:200]
    representative = tf.gather(train_images, np.sort(order)).numpy()
    serving = tf.saved_model.load(export_dir).signatures['serving_default']
    with devices.ieee_float32():        # TFLite's float32 is IEEE; so must the reference be
        reference = np.concatenate([serving(images=tf.constant(test_images[i:i + 500]))
                                    ['probabilities'].numpy()
                                    for i in range(0, len(test_images), 500)])
    reference_accuracy = np.mean(reference.argmax(-1) == test_labels)
    saved_bytes = sum(os.path.getsize(os.path.join(d, f))
                      for d, _, files in os.walk(export_dir) for f in files)
    out('SavedModel: %.2f MB, test accuracy %.2f%%' % (saved_bytes / 1e6,
                                                       100 * reference_accuracy))
    written = {}
    for kind in kinds:
        path = os.path.join(export_dir, 'model_%s.tflite' % kind)
        with open(path, 'wb') as f:
            f.write(tflite_bytes(export_dir, kind, representative))
        probabilities = tflite_predict(tflite_runner(path), test_images)
        changed = np.mean(probabilities.argmax(-1) != reference.argmax(-1))
        accuracy = np.mean(probabilities.argmax(-1) == test_labels)
        most_changed, most_drop = TFLITE_BOUNDS[kind]
        out('%s: %.2f MB, test accuracy %.2f%% (%+.2f points), %.2f%% of the %d test images '
            'classed otherwise than by the SavedModel'
            % (path, os.path.getsize(path) / 1e6, 100 * accuracy,
               100 * (accuracy - reference_accuracy), 100 * changed, len(test_images)))
        if changed > most_changed or 100 * abs(accuracy - reference_accuracy) > most_drop:
            os.remove(path)
            raise UserError('%s strays from the SavedModel beyond the bounds (%.1f%% of classes, '
                            '%.1f points of accuracy); removed it' % (path, 100 * most_changed,
                                                                       most_drop))
        written[kind] = dict(path=path, bytes=os.path.getsize(path), accuracy=float(accuracy),
                             changed=float(changed))
    return dict(saved_model_accuracy=float(reference_accuracy), saved_model_bytes=saved_bytes,
                tflite=written)


def predict_files_tflite(model_path, paths, *, class_names=None, top=3, out=print):
    """predict_files for a .tflite file: only TensorFlow's Lite interpreter runs the net."""
    if not os.path.exists(model_path):
        raise UserError('ckpt_path=%s: no such .tflite file' % model_path, settings=('ckpt_path',))
    runner = tflite_runner(model_path)
    probabilities = tflite_predict(runner, read_images(paths, out=out).numpy())
    names = class_names or (cifar.CIFAR10_CLASSES if probabilities.shape[1] == 10
                            else cifar.CIFAR100_CLASSES if probabilities.shape[1] == 100
                            else cifar.CIFAR100_SUPERCLASSES)
    for path, p in zip(paths, probabilities):
        best = np.argsort(-p)[:top]
        out('%s: %s' % (path, ', '.join('%s %.1f%%' % (names[k], 100 * p[k]) for k in best)))
    return probabilities
