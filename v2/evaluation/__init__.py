"""Evaluation: evaluate (metrics of checkpoints), export (SavedModel, TFLite, image files)."""
