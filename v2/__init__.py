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
import sys
import tempfile


def _import_tensorflow_quietly():
    """Imports TensorFlow with its C++ start-up lines kept off the terminal.

    TensorFlow writes CUDA-probing and oneDNN notes to file descriptor 2 before its
    own logging is set up, so TF_CPP_MIN_LOG_LEVEL cannot hide them (TensorFlow
    issue 79029); they would bury the progress lines and one-line errors. They are
    replayed if the import fails. A user who sets TF_CPP_MIN_LOG_LEVEL sees all.
    """
    if 'TF_CPP_MIN_LOG_LEVEL' in os.environ or 'tensorflow' in sys.modules:
        return
    os.environ['TF_CPP_MIN_LOG_LEVEL'] = '3'
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors='replace'))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_import_tensorflow_quietly()
