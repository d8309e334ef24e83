"""RunOptions: how a run is carried out, beside the Recipe (v2.training.recipe) of what it
computes. RunOptions never change the weights a run ends with, and are not stored."""

import dataclasses


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Where a run writes, how often it reports and saves, where it runs; not stored.

    save_every: a checkpoint at the first logging step at least this many steps after
    the last one (save_every_secs: or this many seconds), besides one at the end and
    on every stop request. Checkpoints are only written at logging steps, right after
    the window's losses were checked, so a non-finite loss never reaches one.
    jit_compile None means XLA where it pays: on GPUs, not on CPUs (see devices);
    layout_optimizer None: grappler's layout optimizer off on CPUs with AMX, on elsewhere.
    prepare_batches: where the training batches are normalised and augmented: 'device'
    (uint8 batches, prepared inside the step), 'host' (tf.data's threads, one-device
    runs only), or 'auto': the host on a one-CPU run, where its threads overlap the
    step, the device everywhere else.
    worker_timeout 0 sets no collective timeout (TensorFlow documents it as a
    debugging aid: a thread per collective).
    """
    ckpt_path: str
    log_path: str | None = None            # default: <ckpt_path>/logs
    log_per_iterations: int = 100
    save_every: int = 1000
    save_every_secs: float = 0.0
    max_to_keep: int = 5
    eval_every: int = 0
    eval_batch_size: int = 500
    steps_per_call: int = 1
    jit_compile: bool | None = None
    layout_optimizer: bool | None = None
    prepare_batches: str = 'auto'
    tf32: bool = True
    distribution_strategy: str = 'default'
    devices: tuple[str, ...] = ()
    cpu_devices: int = 0
    worker_timeout: int = 0

    @property
    def logs(self) -> str:
        return self.log_path or self.ckpt_path.rstrip('/') + '/logs'
