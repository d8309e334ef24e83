"""Trains a CIFAR ResNet, wide ResNet, VGG or plain net on the CIFAR binary files.

  python run_trainer.py --data_path=cifar-10-batches-bin --num_layers=110
  python run_trainer.py --flagfile=configs/wrn_28_10.flags

Restarting with the same --ckpt_path resumes where the run stopped; Ctrl-C or
SIGTERM saves a checkpoint first. All logic lives in the v2 package (v2/cli/trainer.py).
"""

from v2.cli import trainer

if __name__ == '__main__':
    trainer.run()
