"""Evaluation: evaluate (metrics of checkpoints), export (SavedModel, image files), tflite."""
