"""The PyTorch ResNet of v2.tools.torch_resnet is the net this project trains.

Skipped where PyTorch is not installed: it is a benchmark tool's, not a dependency
(pip install torch==2.13.0).
"""

import numpy as np
import numpy_ref as ref
import pytest

torch = pytest.importorskip('torch', reason='PyTorch is not installed (a benchmark tool only)')

from v2.tools import torch_resnet  # noqa: E402


@pytest.mark.parametrize('depth, parameters', [(8, 75290), (20, 269722), (32, 464154),
                                               (56, 853018)])
def test_the_torch_net_has_the_papers_parameter_count(depth, parameters):
    """ResNet-20/32/56 with option A have 0.27M, 0.46M and 0.85M parameters (He et al.
    2015, Table 6). Exactly: ResNet-8 (n = 1) has stem 432 + a 16-wide unit 4,672 + the
    first 32-wide unit 13,920 + the first 64-wide 55,488 + final BN 128 + linear 650 =
    75,290; each further n adds a unit per stage, 4,672 + 18,560 + 73,984 = 97,216."""
    net = torch_resnet.build(depth)
    assert sum(p.numel() for p in net.parameters()) == parameters


def test_the_torch_net_computes_numpys_preactivation_resnet():
    """Its evaluation-mode logits equal numpy_ref's pre-activation ResNet-8 with option A
    shortcuts, given the same weights (moved from PyTorch's OIHW to HWIO)."""
    torch.manual_seed(1)
    net = torch_resnet.build(8).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):      # statistics that matter
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)

    def kernel(conv):
        return conv.weight.detach().numpy().transpose(2, 3, 1, 0)

    def bn(b):
        return [b.weight.detach().numpy(), b.bias.detach().numpy(), b.running_mean.numpy(),
                b.running_var.numpy()]

    h = ref.conv(x, kernel(net.stem))
    for i, unit in enumerate(net.units):
        pre = ref.relu(ref.batch_norm(h, *bn(unit.bn1)))
        y = ref.conv(pre, kernel(unit.conv1), unit.stride)
        y = ref.conv(ref.relu(ref.batch_norm(y, *bn(unit.bn2))), kernel(unit.conv2))
        h = y + ref.option_a(pre if i == 0 else h, y.shape[-1], unit.stride)
    features = ref.relu(ref.batch_norm(h, *bn(net.final_bn))).mean(axis=(1, 2))
    expected = features @ net.fc.weight.detach().numpy().T + net.fc.bias.detach().numpy()
    with torch.no_grad():
        logits = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_a_window_of_steps_trains():
    """The timed step learns: the loss of one repeated batch falls over 20 steps."""
    run = torch_resnet.step_timer(8, 16, 'float32', compiled=False)
    first = run(1)
    assert run(20) < first
