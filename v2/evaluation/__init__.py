"""Evaluation: evaluate (metrics of checkpoints), calibration (ECE, NLL, Brier, temperature
scaling) and its reliability diagram, export (SavedModel, TFLite, image files), onnx_export."""
