"""Evaluates checkpoints of run_trainer.py on the test set, or exports one.

  python run_evaluator.py --data_path=cifar-10-batches-bin --ckpt_path=runs/resnet110

--ckpt_path is a checkpoint prefix or a folder (its latest checkpoint, or every
one with --all_checkpoints). The architecture and the data set come from the
checkpoint; an architecture flag given explicitly must match it. All logic lives
in the v2 package (v2/cli/evaluator.py).
"""

from v2.cli import evaluator

if __name__ == '__main__':
    evaluator.run()
