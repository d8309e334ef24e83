"""Research tools, each a command: python -m v2.tools.<name>.

  benchmark    the trainer's speed beside a Keras 3 baseline and this machine's conv bound
  conv_timing  the net's convolutions timed alone (used by the benchmark)
  experiments  the runs behind the figures and the results table (figure6, table, ...)
  figures      draws files/*.png from the CSV/JSON the experiments write
  anatomy      a built net's parts and units, read from its traced graph
  catalog      the papers' networks and their parameter counts
  keras_nets   the same networks written with Keras 3 layers: the baselines and references
"""

from v2 import cli  # noqa: F401  (every command starts TensorFlow quietly)
