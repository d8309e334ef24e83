"""A trained network for serving: a SavedModel that needs nothing of ours, and image files.

The SavedModel's `serving_default` signature takes uint8 images [N, 32, 32, 3] (RGB,
as decoded from a PNG or JPEG) and returns `probabilities` [N, classes] and
`classes` [N]; the training-set mean subtraction is built in, and the network runs
with its batch-norm moving averages. Load it with tf.saved_model.load(D).
"""

import numpy as np
import tensorflow as tf

from v2 import data
from v2.errors import UserError


class Serving(tf.Module):
    """The network, its pixel mean and its class names, with one serving function."""

    def __init__(self, net, pixel_mean, class_names):
        super().__init__(name='serving')
        self.net = net
        self.pixel_mean = tf.Variable(pixel_mean, trainable=False, name='pixel_mean')
        self.class_names = tf.Variable(list(class_names), trainable=False, name='class_names')

    @tf.function(input_signature=[tf.TensorSpec([None, data.IMAGE_SIZE, data.IMAGE_SIZE,
                                                 data.CHANNELS], tf.uint8, name='images')])
    def serve(self, images):
        logits = self.net(data.normalize(images, self.pixel_mean), training=False)
        return {'probabilities': tf.nn.softmax(logits),
                'classes': tf.argmax(logits, axis=-1)}


def export_saved_model(serving, export_dir):
    """Writes a Serving module as a SavedModel; refuses a folder that already holds files."""
    if tf.io.gfile.exists(export_dir) and tf.io.gfile.listdir(export_dir):
        raise UserError('--export_dir=%s is not empty; choose a new folder so that nothing is '
                        'overwritten' % export_dir)
    tf.saved_model.save(serving, export_dir, signatures={'serving_default': serving.serve})


def read_images(paths, out=print):
    """uint8 RGB images [N, 32, 32, 3] from PNG/JPEG/GIF/BMP files, resized where needed."""
    images = []
    for path in paths:
        try:
            raw = tf.io.read_file(path)
            image = tf.io.decode_image(raw, channels=3, expand_animations=False)
        except (tf.errors.OpError, ValueError) as e:
            raise UserError('%s: not a readable image (%s)'
                            % (path, str(e).strip().splitlines()[0])) from None
        if image.shape[:2] != (data.IMAGE_SIZE, data.IMAGE_SIZE):
            out('note: %s is %dx%d; resized to 32x32 (the network sees 32x32 images)'
                % (path, image.shape[1], image.shape[0]))
            image = tf.cast(tf.clip_by_value(tf.round(tf.image.resize(
                image, [data.IMAGE_SIZE, data.IMAGE_SIZE], antialias=True)), 0, 255), tf.uint8)
        images.append(image)
    return tf.stack(images)


def predict_files(serving, paths, top=3, out=print):
    """Prints the most likely classes of each image file; returns the probabilities."""
    result = serving.serve(read_images(paths, out))
    probabilities = result['probabilities'].numpy()
    names = [n.decode() for n in serving.class_names.numpy()]
    for path, p in zip(paths, probabilities):
        best = np.argsort(-p)[:top]
        out('%s: %s' % (path, ', '.join('%s %.1f%%' % (names[k], 100 * p[k]) for k in best)))
    return probabilities
