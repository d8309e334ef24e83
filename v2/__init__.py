"""Hand-built ResNets for CIFAR in low-level TensorFlow 2 (tf.Module, tf.Variable, tf.nn).

The library, in the order data flows through it (importing it sets no flags and
touches no file descriptor):
  data/        the CIFAR record formats, file checks, the input pipelines, download,
               your own images converted to CIFAR files
  nets/        layers, residual units, the ResNet and VGG classes, ModelConfig and build
  runtime/     devices, precision, distribution strategies, the checkpoint's layout,
               weight averages: what training and evaluation both use
  evaluation/  test-set metrics, calibration, SavedModel and TFLite export
  training/    the recipe, schedule, optimizer, the traced step, the training state,
               the checks before the first step, the loop and its actions, what a
               run records beside its TensorBoard logs
The command line and the tools:
  cli/         the trainer's, evaluator's and converter's flags, one-line errors, their
               evaluator's and converter's main functions (run_trainer.py,
               run_evaluator.py, python -m v2.cli.convert)
  tools/       benchmark, experiments, figures, curves, anatomy, catalog, gpu_report, each
               with its flags in tools/flags.py
               (python -m v2.tools.X)
"""
