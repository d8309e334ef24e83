"""Hand-built pre-activation ResNets for CIFAR in low-level TensorFlow 2.

Modules, in the order data flows through them:
  errors    -- UserError: a user's mistake, reported in one line by the scripts.
  data      -- the CIFAR binary record format, file checks and tf.data pipelines.
  model     -- the network (tf.Module, tf.Variable, tf.nn ops; no Keras).
  schedule  -- the piecewise-constant learning rate with optional warm-up.
  optimizer -- SGD with momentum on the fused TensorFlow kernel.
  checkpoint-- what a checkpoint holds and how it is found, read and checked.
  train     -- the training loop: steps, checkpoints, summaries, progress.
  evaluate  -- test-set metrics for one or many checkpoints.
  options   -- the absl flags shared by run_trainer.py and run_evaluator.py.
"""

import os

# TensorFlow's C++ start-up messages (CUDA probing, oneDNN notes) would bury the
# progress lines; a user can still ask for them with TF_CPP_MIN_LOG_LEVEL=0.
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
