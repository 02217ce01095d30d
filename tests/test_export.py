"""TorchScript and ONNX exports reproduce the PyTorch model."""

import onnxruntime
import pytest
import torch
from conftest import SPACE_NAMES, random_archs

from nascli.nn.builder import build_model
from nascli.nn.export import _export_traced, export_onnx, export_torchscript
from nascli.space.network import NetworkSettings, decode
from nascli.space.spaces import SPACES


def trained_like(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BN statistics, so the exports are checked on more than identity BNs."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.bias.data.uniform_(-0.2, 0.2, generator=generator)
    return model.eval()


@pytest.mark.parametrize("name", SPACE_NAMES)
@pytest.mark.filterwarnings("ignore:Constant folding")  # the tracing exporter, called directly
def test_exports_reproduce_pytorch_outputs(name, tmp_path):
    settings = NetworkSettings(resolution=40, num_classes=7, in_channels=3)
    network = decode(SPACES[name], random_archs(name, 1, seed=11)[0], settings)
    torch.manual_seed(0)
    model = trained_like(build_model(network))
    images = torch.randn(3, 3, 40, 40)  # a batch size other than the export example's
    with torch.no_grad():
        expected = model(images)

    export_torchscript(model, tmp_path / "model.pt")
    scripted = torch.jit.load(str(tmp_path / "model.pt"))
    torch.testing.assert_close(scripted(images), expected, atol=1e-4, rtol=0)

    assert _export_traced(model, torch.randn(1, 3, 40, 40), tmp_path / "traced.onnx")
    for quick in (False, True):  # the current exporter, and the quick one latency timing uses
        export_onnx(model, torch.randn(1, 3, 40, 40), tmp_path / "model.onnx", quick=quick)
        session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
        (logits,) = session.run(None, {"images": images.numpy()})
        torch.testing.assert_close(torch.from_numpy(logits), expected, atol=1e-4, rtol=0)
