"""The fused fake-quantize kernels for NNCF's quantizers (rexnet_deploy.int8.nncf_fused): which calls
they take and what happens when they cannot run (default tier, no compiler), and, with the real C++
compile and the real NNCF, NNCF's outputs and gradients through a quantized network (long tier: the
compile takes ~25 s once per machine)."""

from __future__ import annotations

import pytest

from rexnet_deploy.int8 import nncf_fused
from rexnet_deploy.log import as_build_log

torch = pytest.importorskip("torch")


def test_broadcast_covers_one_range_or_ranges_along_one_dimension():
    x = torch.zeros(2, 8, 5, 7)
    assert nncf_fused.broadcast(x, torch.zeros(1)) == (1, 560)
    assert nncf_fused.broadcast(x, torch.zeros(1, 8, 1, 1)) == (8, 35)  # activations per channel
    assert nncf_fused.broadcast(torch.zeros(8, 3, 3, 3), torch.zeros(8, 1, 1, 1)) == (8, 27)  # weights
    assert nncf_fused.broadcast(x, torch.zeros(1, 8, 1, 7)) is None  # two dimensions
    assert nncf_fused.broadcast(x, torch.zeros(8)) is None  # not laid out along x's dimensions
    assert nncf_fused.broadcast(x, torch.zeros(1, 4, 1, 1)) is None  # not x's channel count
    # channels-last (NHWC) memory: element i belongs to channel i % C
    nhwc = x.contiguous(memory_format=torch.channels_last)
    assert nncf_fused.broadcast(nhwc, torch.zeros(1)) == (1, 560)
    assert nncf_fused.broadcast(nhwc, torch.zeros(1, 8, 1, 1)) == (8, 1)
    weights = torch.zeros(8, 3, 3, 3).contiguous(memory_format=torch.channels_last)
    assert nncf_fused.broadcast(weights, torch.zeros(8, 1, 1, 1)) == (8, 27)  # a channel's weights stay together
    assert nncf_fused.broadcast(x.transpose(2, 3), torch.zeros(1)) is None  # neither layout
    assert nncf_fused.broadcast(x[..., ::2], torch.zeros(1, 8, 1, 1)) is None  # not dense


class _Recorder:
    """Stands in for NNCF's CPU dispatch and for the compiled kernels: records which ran."""

    def __init__(self) -> None:
        self.ran: list[tuple] = []

    def get(self, name):
        return lambda *args: self.ran.append(("nncf", name))

    def fq_forward(self, *args):
        self.ran.append(("fused", "forward", args[-2:]))

    def fq_backward(self, *args):
        grad, x = args[:2]
        self.ran.append(("fused", "backward", args[-2:]))
        assert grad.stride() == x.stride() and torch.equal(grad, self.grad)  # laid out as x, same values
        return ("grad_input", "grad_low", "grad_range")


def test_dispatch_takes_float32_cpu_layouts_it_covers_and_hands_the_rest_to_nncf():
    rec = _Recorder()
    dispatch = nncf_fused._Dispatch(rec, rec)
    x, per_channel = torch.zeros(2, 8, 5, 7), torch.ones(1, 8, 1, 1)
    dispatch.get("Quantize_forward")(x, per_channel, per_channel, 256)
    rec.grad = torch.randn(2, 8, 5, 7).contiguous(memory_format=torch.channels_last)  # e.g. from an NHWC convolution
    grads = dispatch.get("Quantize_backward")(rec.grad, x, torch.ones(1), torch.ones(1), 256, 0, 255, True)
    dispatch.get("Quantize_forward")(x.double(), per_channel.double(), per_channel.double(), 256)
    dispatch.get("Quantize_forward")(x, torch.ones(1, 8, 1, 7), torch.ones(1, 8, 1, 7), 256)
    dispatch.get("Quantize_backward")(x.double(), x.double(), torch.ones(1), torch.ones(1), 256, 0, 255, False)
    assert rec.ran == [("fused", "forward", (8, 35)), ("fused", "backward", (1, 560)), ("nncf", "Quantize_forward"),
                       ("nncf", "Quantize_forward"), ("nncf", "Quantize_backward")]
    assert grads == ["grad_input", "grad_low", "grad_range"] and dispatch.calls == {"fused": 2, "nncf": 3}


def test_a_failed_compile_or_check_leaves_nncfs_own_kernels(monkeypatch):
    pytest.importorskip("nncf")
    from nncf.torch.quantization import quantize_functions

    nncf_cpu = quantize_functions.QuantizedFunctionsCPU
    lines: list[str] = []

    def no_compiler():
        raise RuntimeError("Error building extension\ng++: command not found")

    monkeypatch.setattr(nncf_fused, "_compile", no_compiler)
    with nncf_fused.installed(as_build_log(lines.append)) as record:
        assert quantize_functions.QuantizedFunctionsCPU is nncf_cpu
    assert record == {"fake_quantize_kernels": "nncf",
                      "fused_kernels_not_used": "compile failed (RuntimeError: g++: command not found)"}
    monkeypatch.setattr(nncf_fused, "_compile", lambda: _Recorder())
    monkeypatch.setattr(nncf_fused, "agrees_with_nncf", lambda dispatch: "output differs from NNCF's")
    with nncf_fused.installed(as_build_log(lines.append)) as record:
        assert quantize_functions.QuantizedFunctionsCPU is nncf_cpu
    assert record["fused_kernels_not_used"] == "output differs from NNCF's"

    def check_raises(dispatch):
        raise TypeError("Quantize_backward() takes 7 arguments")

    monkeypatch.setattr(nncf_fused, "agrees_with_nncf", check_raises)
    with nncf_fused.installed(as_build_log(lines.append)) as record:
        assert quantize_functions.QuantizedFunctionsCPU is nncf_cpu
    assert record["fused_kernels_not_used"] == "self-check failed (TypeError: Quantize_backward() takes 7 arguments)"
    assert [line.split(" (")[0] for line in lines] == ["fused fake-quantize kernels not used"] * 3


class _Net(torch.nn.Module):
    """A convolution, a depthwise one (NNCF quantizes its input per channel) and a classifier."""

    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.SiLU(), torch.nn.Conv2d(16, 16, 3, padding=1, groups=16),
            torch.nn.SiLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


@pytest.mark.slow
@pytest.mark.long  # compiles the kernels (~25 s once per machine) and quantizes a network with NNCF
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])  # qad distils the OpenVINO student channels-last
def test_fused_kernels_give_nncfs_outputs_and_gradients_through_a_quantized_network(layout):
    pytest.importorskip("nncf")
    import shutil

    from nncf.torch.quantization import quantize_functions
    from torch.utils.cpp_extension import is_ninja_available

    from rexnet_deploy.int8.qad import _import_nncf

    if not (shutil.which("c++") and is_ninja_available()):  # then builds run NNCF's kernels (and say so)
        pytest.skip("needs a C++ compiler and ninja to compile the kernels")

    nncf = _import_nncf()
    torch.manual_seed(0)
    x = torch.randn(16, 3, 24, 24)
    student = nncf.quantize(_Net().eval(), nncf.Dataset([x]), subset_size=1,
                            preset=nncf.QuantizationPreset.MIXED)  # asymmetric activations, as qad's
    if layout == "channels_last":
        student.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    params = [p for p in student.parameters() if p.is_floating_point()]
    for p in params:
        p.requires_grad_(True)

    def forward_backward():
        for p in params:
            p.grad = None
        out = student(x * 1.5)  # beyond the calibrated ranges too: the clipped gradients count
        (out ** 2).mean().backward()
        return out.detach(), [p.grad.clone() for p in params]

    out_nncf, grads_nncf = forward_backward()
    nncf_cpu = quantize_functions.QuantizedFunctionsCPU
    with nncf_fused.installed(as_build_log(lambda m: None)) as record:
        assert record["fake_quantize_kernels"].startswith("fused"), record
        out_fused, grads_fused = forward_backward()
    assert quantize_functions.QuantizedFunctionsCPU is nncf_cpu  # put back
    assert record["fake_quantize_calls"]["fused"] >= 8 and record["fake_quantize_calls"]["nncf"] == 0
    assert torch.equal(out_fused, out_nncf)  # the forward bit for bit
    for a, b in zip(grads_fused, grads_nncf):  # the range sums in another order
        assert float((a - b).norm()) <= 1e-3 * float(b.norm()) + 1e-7, (a, b)
    assert any(float(g.abs().sum()) > 0 for g in grads_fused)
