"""The same CIFAR ResNet in PyTorch, timed the way the benchmark times this project's step.

  pip install torch==2.13.0                # a benchmark tool: torch is not a dependency
  python -m v2.tools.torch_resnet --num_layers=20 --precision=bfloat16
  python -m v2.tools.torch_resnet --num_layers=20 --precision=bfloat16 --compile

The net is the one v2.nets builds by default, written the way a PyTorch user would:
He et al. 2016's pre-activation basic units (BN -> ReLU -> conv, twice), the first
unit's shortcut taking its BN -> ReLU output, option A shortcuts where the shape
changes (2x2/2 average pooling, the new channels zero-padded half on each side),
3x3 convolutions padded by one on every side, a final BN -> ReLU, global average
pooling and a linear layer; the same parameter count (tests/test_torch_resnet.py).
It trains with SGD, momentum 0.9 and weight decay 1e-4 on the conv and linear
weights only, as the trainer does, in channels_last, under CPU bfloat16 autocast with
--precision=bfloat16, eagerly or under torch.compile. Like the benchmark's in-memory
row it steps on one batch held in memory, normalised once; each window ends when its
last loss has been read. v2.tools.versus runs it beside this project's rows, each in
a process of its own; TensorFlow is loaded there (the tools package starts it) but
runs nothing.
"""

import statistics
import sys
import time

from absl import app, flags

FLAGS = flags.FLAGS


def define_flags(flag_values=FLAGS):
    """This tool's flags, defined when it runs as a program: its names (num_layers,
    batch_size, ...) are the trainer's too, and importing it beside them would clash."""
    into = dict(flag_values=flag_values)
    flags.DEFINE_integer('num_layers', 20, 'Depth 6n+2 of the pre-activation ResNet.',
                         lower_bound=8, **into)
    flags.DEFINE_integer('batch_size', 128, 'Images per step.', lower_bound=1, **into)
    flags.DEFINE_enum('precision', 'float32', ['float32', 'bfloat16'],
                      'bfloat16: CPU autocast (weights and updates stay float32, as ours).',
                      **into)
    flags.DEFINE_boolean('compile', False, 'Time the step under torch.compile.', **into)
    flags.DEFINE_integer('warmup_steps', 20, 'Steps run before timing (compilation, caches).',
                         lower_bound=0, **into)
    flags.DEFINE_integer('windows', 5, 'Timing windows.', lower_bound=1, **into)
    flags.DEFINE_integer('window_steps', 30, 'Steps in each timing window.', lower_bound=1,
                         **into)
    flags.DEFINE_boolean('machine_readable', False, 'Print only the rates of the windows.',
                         **into)


def build(num_layers, num_classes=10):
    """The pre-activation ResNet-(6n+2) of He et al. 2016 with option A shortcuts."""
    import torch
    from torch import nn

    class Unit(nn.Module):
        def __init__(self, in_channels, width, stride, shares_preact):
            super().__init__()
            self.bn1 = nn.BatchNorm2d(in_channels)
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, 1, padding=1, bias=False)
            self.stride, self.extra, self.shares_preact = stride, width - in_channels, \
                shares_preact

        def shortcut(self, x):
            if self.stride > 1:
                x = nn.functional.avg_pool2d(x, self.stride)
            if self.extra:
                x = nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2,
                                          self.extra - self.extra // 2))
            return x

        def forward(self, x):
            pre = torch.relu(self.bn1(x))
            y = self.conv2(torch.relu(self.bn2(self.conv1(pre))))
            return y + self.shortcut(pre if self.shares_preact else x)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            n = (num_layers - 2) // 6
            self.stem = nn.Conv2d(3, 16, 3, 1, padding=1, bias=False)
            units, channels = [], 16
            for stage, width in enumerate((16, 32, 64)):
                for i in range(n):
                    units.append(Unit(channels, width, 2 if stage and not i else 1,
                                      shares_preact=not stage and not i))
                    channels = width
            self.units = nn.Sequential(*units)
            self.final_bn = nn.BatchNorm2d(channels)
            self.fc = nn.Linear(channels, num_classes)
            for module in self.modules():            # He et al. 2015's fan-in initialisation
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight, mode='fan_in', nonlinearity='relu')

        def forward(self, x):
            x = torch.relu(self.final_bn(self.units(self.stem(x))))
            return self.fc(x.mean(dim=(2, 3)))

    if num_layers % 6 != 2:
        raise ValueError('num_layers=%d: expected 6n+2' % num_layers)
    return ResNet()


def step_timer(num_layers, batch_size, precision, compiled):
    """A function of n that runs n training steps on one in-memory batch."""
    import torch
    torch.manual_seed(0)
    net = build(num_layers).to(memory_format=torch.channels_last)
    decayed = [p for name, p in net.named_parameters() if name.endswith('weight') and p.dim() > 1]
    others = [p for name, p in net.named_parameters() if not (name.endswith('weight')
                                                              and p.dim() > 1)]
    optimizer = torch.optim.SGD([{'params': decayed, 'weight_decay': 1e-4},
                                 {'params': others, 'weight_decay': 0.0}], lr=0.1, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch_size, 3, 32, 32), generator=generator).float()
    images = ((images - 120.0) / 64.0).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,), generator=generator)
    loss_of = torch.nn.CrossEntropyLoss()

    def step():
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bfloat16'):
            loss = loss_of(net(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    if compiled:
        step = torch.compile(step)

    def run(n):
        for _ in range(n):
            loss = step()
        return float(loss.detach())                  # the window ends once its loss is read
    return run


def time_windows(run, batch_size, warmup_steps, windows, window_steps):
    """Images/second of each timed window, after the warm-up."""
    if warmup_steps:
        run(warmup_steps)
    rates = []
    for _ in range(windows):
        start = time.perf_counter()
        run(window_steps)
        rates.append(window_steps * batch_size / (time.perf_counter() - start))
    return rates


def main(argv):
    if len(argv) > 1:
        raise app.UsageError('unexpected arguments: %s' % ' '.join(argv[1:]))
    try:
        import torch
    except ImportError:
        sys.exit('torch_resnet: error: PyTorch is not installed (pip install torch==2.13.0)')
    run = step_timer(FLAGS.num_layers, FLAGS.batch_size, FLAGS.precision, FLAGS.compile)
    rates = time_windows(run, FLAGS.batch_size, FLAGS.warmup_steps, FLAGS.windows,
                         FLAGS.window_steps)
    if FLAGS.machine_readable:
        print('rates: ' + ' '.join('%.1f' % r for r in rates))
        return 0
    print('PyTorch %s, %d threads: pre-activation ResNet-%d, batch %d, %s, %s, channels_last; '
          '%d windows of %d steps' % (torch.__version__, torch.get_num_threads(),
                                      FLAGS.num_layers, FLAGS.batch_size, FLAGS.precision,
                                      'torch.compile' if FLAGS.compile else 'eager',
                                      FLAGS.windows, FLAGS.window_steps))
    print('images/s: median %.0f (min %.0f, max %.0f)'
          % (statistics.median(rates), min(rates), max(rates)))
    return 0


if __name__ == '__main__':
    define_flags()
    app.run(main)
