"""CIFAR data: cifar (records, files, checks), pipeline (tf.data batches), download."""
