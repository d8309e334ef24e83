"""The command-line layer: flags, one-line errors, and TensorFlow's start-up kept quiet.

Importing this package (every command does, first) imports TensorFlow with its C++
start-up lines kept off the terminal: TensorFlow writes CUDA-probing and oneDNN
notes to file descriptor 2 before its own logging is set up, so
TF_CPP_MIN_LOG_LEVEL cannot hide them (TensorFlow issue 79029), and they would
bury the progress lines and one-line errors. They are replayed if the import
fails. A user who sets TF_CPP_MIN_LOG_LEVEL sees all. The library (v2.data,
v2.nets, v2.training, v2.evaluation) does nothing of the kind when imported.
"""

import os
import sys
import tempfile


def _import_tensorflow_quietly():
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
