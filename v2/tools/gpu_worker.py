"""gpu_report's measurements, in a worker process the report can stop at its deadline.

The report (v2.tools.gpu_report) starts this module as

  python -m v2.tools.gpu_worker '{"devices": [], "tf32": true}'

and sends it one request a line (JSON: {"kind": ..., "args": {...}}) on standard input.
The worker answers each with one JSON line on its standard output; everything else it
or TensorFlow prints goes to standard error, which the report keeps in a log. A request
that raises (out of memory, say) is answered with its error in one line and the worker
waits for the next; the report kills the worker when the deadline comes and starts a
new one for the next part. The requests are the same on the CPU (the report's
--rehearse), only at toy sizes.
"""

import json
import os
import sys
import time


def one_line(error: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    text = str(error).strip().splitlines()
    return '%s: %s' % (type(error).__name__, text[0][:300] if text else '')


class Measure:
    """The requests, each a method returning a dict of plain values (the JSON answer)."""

    def __init__(self, used):
        self.used = used

    # --- shared pieces -----------------------------------------------------------------
    def _gpu(self):
        return 'GPU:0' if self.used[0].kind == 'GPU' else None

    def _reset_peak(self):
        import tensorflow as tf
        if self._gpu():
            tf.config.experimental.reset_memory_stats(self._gpu())

    def _peak_mib(self):
        import tensorflow as tf
        if not self._gpu():
            return None
        return tf.config.experimental.get_memory_info(self._gpu())['peak'] / 2 ** 20

    def _dtype(self, precision):
        from v2.runtime import precision as precision_lib
        return precision_lib.compute_dtype(precision, self.used, warn=lambda line: None)

    # --- the requests -------------------------------------------------------------------
    def device(self, *, depth, batch, precision, folder):
        """The device as TensorFlow sees it, and the cold start: the first op, and the first
        and second steps of the trainer's traced step with XLA off and on.

        A first step with XLA off loads (or, on a card the wheel has no machine code for,
        JIT-compiles from PTX) every TensorFlow kernel the step uses; a first step with XLA
        on traces and compiles the step. The second steps are the steady state.
        """
        import tensorflow as tf

        from v2.nets import model
        from v2.tools import benchmark
        from v2.training import loop
        from v2.training.options import RunOptions
        from v2.training.recipe import Recipe
        start = time.perf_counter()
        x = tf.random.normal([1024, 1024])
        float(tf.reduce_sum(x @ x))
        first_op = time.perf_counter() - start
        config = model.ModelConfig(num_layers=depth)
        recipe = Recipe(batch_size=batch, precision=precision)
        dtype = self._dtype(precision)
        steps = {}
        for xla in (False, True):
            options = RunOptions(ckpt_path=os.path.join(folder, 'cold'), jit_compile=xla)
            setup = loop.set_up_on(self.used, config, recipe, options, lambda line: None)
            rates = benchmark.time_in_memory_step(config, recipe, options, setup,
                                                  benchmark.Timing(0, 2, 1))
            steps['xla' if xla else 'plain'] = [batch / rate for rate in rates]
        capability = self.used[0].compute_capability
        return {'devices': [str(d) for d in self.used], 'name': self.used[0].description,
                'kind': self.used[0].kind,
                'compute_capability': list(capability) if capability else None,
                'first_op_s': first_op, 'plain_steps_s': steps['plain'],
                'xla_steps_s': steps['xla'], 'computed': dtype.name,
                'tf32': bool(self._gpu()
                             and tf.config.experimental.tensor_float_32_execution_enabled())}

    def row(self, *, depth, precision, xla, steps_per_call, profile, timing, batch, data_path,
            folder):
        """Images/second of the trainer (its real pipeline and loop, v2.training.loop.train)
        in timed windows, and optionally one more window under the profiler, at the same
        steps per call and host read (one a window) as the timed ones."""
        import tensorflow as tf

        from v2.nets import model
        from v2.tools import benchmark
        from v2.training import loop
        from v2.training.options import RunOptions
        from v2.training.recipe import Recipe
        warmup_windows, windows, steps = timing
        plan = benchmark.Timing(warmup_windows, windows, steps)
        config = model.ModelConfig(num_layers=depth)
        recipe = Recipe(batch_size=batch, precision=precision,
                        num_iterations=plan.total_steps + (steps if profile else 0))
        name = 'resnet%d-%s-%s-%d' % (depth, precision, 'xla' if xla else 'plain',
                                      steps_per_call)
        options = RunOptions(ckpt_path=os.path.join(folder, name), jit_compile=xla,
                             steps_per_call=steps_per_call, log_per_iterations=steps,
                             save_every=10 ** 9,
                             tf32=tf.config.experimental.tensor_float_32_execution_enabled())
        tf32 = options.tf32 and bool(self._gpu())         # TF32 is a GPU's
        logdir = os.path.join(folder, name + '-profile')
        rates, lines, problems = [], [], []

        def on_record(step, split, means):
            if split != 'train':
                return
            rates.append(means['images_per_second'])
            try:                       # a profiler that cannot start costs the busy share only
                if profile and len(rates) == plan.warmup_windows + plan.windows:
                    tf.profiler.experimental.start(logdir)  # after this window's host read
                elif profile and len(rates) == plan.warmup_windows + plan.windows + 1:
                    tf.profiler.experimental.stop()         # after the profiled window's read
            except Exception as e:     # noqa: BLE001
                problems.append(one_line(e))
        self._reset_peak()
        loop.train(config, recipe, options, data_path, out=lines.append, on_record=on_record)
        timed = plan.timed(rates)
        busy = None
        if profile and not problems:
            from v2.tools import gpu_trace
            space = gpu_trace.read_trace(logdir)
            busy = gpu_trace.busy_share(space) if space is not None else None
        return {'rates': timed, 'computed': self._dtype(precision).name, 'xla': bool(xla),
                'tf32': tf32, 'peak_mib': self._peak_mib(),
                'train_flops': 6 * model.multiply_adds(model.build(config)),
                'first_line': next((line for line in lines if 'trainable parameters' in line),
                                   ''), 'busy': busy,
                'profiled': bool(profile), 'profile_error': problems[0] if problems else ''}

    def keras(self, *, depth, precision, timing, batch, data_path):
        """Images/second of a Keras 3 model.fit of the same net (benchmark.time_keras)."""
        from v2.nets import model
        from v2.tools import benchmark
        from v2.training.recipe import Recipe
        computed = self._dtype(precision).name
        self._reset_peak()
        rates, jit = benchmark.time_keras(model.ModelConfig(num_layers=depth),
                                          Recipe(batch_size=batch), data_path, computed,
                                          benchmark.Timing(*timing))
        return {'rates': rates, 'computed': computed, 'xla': bool(jit),
                'peak_mib': self._peak_mib()}

    def save(self, *, depth, batch, folder, repeats=3):
        """Median seconds of one save of the net's training state (weights, momenta,
        batch-norm statistics), as the trainer writes it; the first save, which traces,
        is left out."""
        import statistics

        import numpy as np
        import tensorflow as tf

        from v2.nets import model
        from v2.training.recipe import Recipe
        from v2.training.state import TrainState
        recipe = Recipe(batch_size=batch)
        state = TrainState.create(model.ModelConfig(num_layers=depth), recipe,
                                  strategy=tf.distribute.get_strategy(), dtype=tf.float32,
                                  mean=np.zeros([32, 32, 3], np.float32))
        manager = tf.train.CheckpointManager(state.checkpoint(),
                                             os.path.join(folder, 'save'), max_to_keep=1)
        manager.save()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            manager.save()
            times.append(time.perf_counter() - start)
        return {'seconds': statistics.median(times), 'bytes': state.bytes()}


def main(argv):
    """Sets up the devices, says it is ready, then answers requests until stdin closes."""
    results = os.fdopen(os.dup(1), 'w', buffering=1)
    os.dup2(2, 1)                      # anything else printed goes to standard error
    started = time.perf_counter()
    config = json.loads(argv[1]) if len(argv) > 1 else {}
    from v2.runtime import devices
    imported = time.perf_counter() - started
    used = devices.setup('default', devices=tuple(config.get('devices', ())),
                         tf32=config.get('tf32', True),
                         out=lambda line: print(line, file=sys.stderr))
    measure = Measure(used)

    def send(answer):
        results.write(json.dumps(answer) + '\n')
        results.flush()
    send({'ready': True, 'import_s': imported, 'devices': [str(d) for d in used]})
    for line in sys.stdin:
        request = json.loads(line)
        try:
            answer = getattr(measure, request['kind'])(**request['args'])
        except Exception as e:        # noqa: BLE001 (a part's failure is its answer)
            import traceback
            traceback.print_exc()
            answer = {'error': one_line(e)}
        send(answer)
    return 0


if __name__ == '__main__':
    sys.exit(main(sys.argv))
