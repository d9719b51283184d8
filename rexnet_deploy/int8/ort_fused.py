"""ONNX Runtime's default INT8 (``fused-qad``): ONNX Runtime's own fusable Q/DQ graph, distilled.

ONNX Runtime's CPU provider runs a convolution as one int8 kernel (QLinearConv) only when Q/DQ pairs
sit on its input *and* its output; ``quantize_static``'s u8 graph has that placement (fast) and the
distilled ModelOpt/NNCF graphs do not (they quantize convolution inputs only, so every Q/DQ runs as
a separate pass). This recipe keeps the placement and distils the weights *in* it:

1. **The graph**: the backend's post-training quantization (``quantize_static``: u8 asymmetric
   per-tensor activations, min-max averaged per batch; int8 7-bit per-channel weights; the
   squeeze-excitation gates, the stem and the classifier head FP32), i.e. exactly the nodes, scales
   and zero points the provider fuses.
2. **The student**: :class:`GraphStudent` runs that ONNX graph in PyTorch, op by op: every
   activation Q/DQ pair as a fake-quantize with the graph's scale and zero point (straight-through
   rounding, gradient clipped outside the range), every weight as a trainable FP32 tensor (from the
   FP32 export, BatchNorm folded) fake-quantized on the graph's per-channel grid.
3. **Distillation**: :func:`rexnet_deploy.int8.qad.distill` toward the FP32 model's logits (the
   same loss as every QAD recipe here), on :data:`SCHEDULE`: the weights only, the graph's
   activation ranges kept, 40 steps, crops down to 8% of the photo. About 75 s on 2 cores, so it is
   ONNX Runtime's default.
4. **Write-back**: the trained weights and biases are quantized with the graph's own scales into
   its integer initializers. Nothing else changes, so ONNX Runtime fuses the result exactly as it
   fuses ``quantize_static``'s graph.

Build-time only (torch, onnx, onnxruntime.quantization); engines never import it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..errors import BuildError
from .recipes import ONNXRUNTIME_FUSED as RECIPE

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

    from ..log import BuildLog

# the graph's weight grid: int8 per-channel, 7-bit range (quantize_static's reduce_range: [-64, 64])
WEIGHT_RANGE = (-64, 64)
# The schedule of ONNX Runtime's default INT8 recipe (qad.QadConfig fields): the weights alone (the
# graph's activation ranges fixed), a 5-step warm-up to lr 1e-5, a cosine decay to 0 at step 40, all
# steps run (no held-out early stop: its 30-photo SQNR curve moved ±1.5 dB between checks here). On
# dev/ (200 unseen-class photos, 2-vCPU Xeon; the graph's head still quantized then) it measured
# 0.945 top-1 / 31.7 dB in 72 s of distillation; learned ranges at the same schedule 0.910 / 31.3 dB at
# 1.5x the step time, lr 2e-5 30.8 dB, 5e-6 32.7 dB but decisive 0.969, 60 steps 31.5 dB. With the
# head FP32 (backends.onnxruntime._head_nodes): 33.7 dB; with the stem FP32 too (models.STEM): 34.4-34.6 dB
# over three distillation seeds (docs/int8-fidelity.md, "ONNX Runtime"). Crops down to 8% of the image
# (0.35 before): over distillation seeds 0-4 decisive 0.994-1.000 and top-2 1.000 every time, against
# 0.981-0.994 and 0.990-1.000 (under the 0.99 / 0.995 on three / two of five seeds), SQNR the same
# (34.4-34.9 dB) and top-1 0.935-0.950 against 0.925-0.960.
SCHEDULE: dict[str, Any] = {"steps": 40, "lr": 1e-5, "warmup": 5, "schedule": "cosine", "patience": 0,
                            "min_crop_area": 0.08}


def _student_class():
    import torch
    import torch.nn.functional as F
    from onnx import helper, numpy_helper

    class GraphStudent(torch.nn.Module):
        """An ONNX Q/DQ graph run in PyTorch: activation Q/DQ pairs as straight-through fake-quantizes
        with the graph's scales; weights (those with a float original in ``float_weights``, keyed by
        the initializer name ``quantize_static`` quantized) as trainable parameters."""

        def __init__(self, model: "onnx.ModelProto", float_weights: dict[str, np.ndarray]) -> None:
            super().__init__()
            graph = model.graph
            self.nodes = list(graph.node)
            self.input_name = graph.input[0].name
            self.output_names = [o.name for o in graph.output]
            self.consts: dict[str, torch.Tensor] = {}
            self.arrays: dict[str, np.ndarray] = {}
            for init in graph.initializer:
                a = numpy_helper.to_array(init)
                self.arrays[init.name] = a
            for node in self.nodes:
                if node.op_type == "Constant":
                    self.arrays[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
            self.params = torch.nn.ParameterDict()
            self.trained: dict[str, str] = {}  # quantized initializer name -> parameter key
            for node in self.nodes:
                if node.op_type == "DequantizeLinear" and node.input[0] in self.arrays:
                    original = node.input[0].removesuffix("_quantized")
                    if original in float_weights and node.input[0] not in self.trained:
                        key = f"p{len(self.params)}"
                        self.params[key] = torch.nn.Parameter(torch.from_numpy(
                            np.array(float_weights[original], np.float32)))
                        self.trained[node.input[0]] = key
            for name, a in self.arrays.items():  # as float32 tensors (integers too: zero points, biases)
                self.consts[name] = torch.from_numpy(np.array(a, dtype=np.float32))
            self.attrs = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in self.nodes]

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            env: dict[str, Any] = {self.input_name: x}

            def val(name: str):
                if name in env:
                    return env[name]
                return self.consts[name]

            for node, at in zip(self.nodes, self.attrs):
                op, ins = node.op_type, node.input
                if op == "Constant":
                    continue
                if op == "QuantizeLinear":
                    env[node.output[0]] = ("q", val(ins[0]), ins[1], ins[2] if len(ins) > 2 else "", at)
                    continue
                if op == "DequantizeLinear":
                    env[node.output[0]] = self._dequantize(node, at, env)
                    continue
                a = [val(i) if i else None for i in ins]
                if op == "Conv":
                    pads = at.get("pads", [0, 0, 0, 0])
                    if pads[:2] != pads[2:]:
                        raise BuildError(f"{node.name}: asymmetric padding is not supported here")
                    y = F.conv2d(a[0], a[1], a[2] if len(a) > 2 else None, tuple(at.get("strides", (1, 1))),
                                 tuple(pads[:2]), tuple(at.get("dilations", (1, 1))), at.get("group", 1))
                elif op == "Sigmoid":
                    y = torch.sigmoid(a[0])
                elif op == "Mul":
                    y = a[0] * a[1]
                elif op == "Add":
                    y = a[0] + a[1]
                elif op == "Relu":
                    y = torch.relu(a[0])
                elif op == "Clip":
                    lo = float(a[1]) if len(a) > 1 and a[1] is not None else None
                    hi = float(a[2]) if len(a) > 2 and a[2] is not None else None
                    y = torch.clamp(a[0], lo, hi)
                elif op == "Concat":
                    y = torch.cat(a, dim=at["axis"])
                elif op == "Slice":
                    y = self._slice(a[0], *[self.arrays[i] if i else None for i in list(ins[1:]) + [""] * (5 - len(ins))][:4])
                elif op == "ReduceMean":
                    axes = at.get("axes") if "axes" in at else [int(v) for v in self.arrays[ins[1]]]
                    y = a[0].mean(dim=tuple(axes), keepdim=bool(at.get("keepdims", 1)))
                elif op == "GlobalAveragePool":
                    y = a[0].mean(dim=(2, 3), keepdim=True)
                elif op == "Flatten":
                    y = torch.flatten(a[0], at.get("axis", 1))
                elif op == "Gemm":
                    w = a[1].t() if at.get("transB", 0) else a[1]
                    y = at.get("alpha", 1.0) * (a[0].t() if at.get("transA", 0) else a[0]) @ w
                    if len(a) > 2 and a[2] is not None:
                        y = y + at.get("beta", 1.0) * a[2]
                elif op == "Identity":
                    y = a[0]
                else:
                    raise BuildError(f"the fused recipe cannot run ONNX op {op} ({node.name}) in PyTorch")
                env[node.output[0]] = y
            outs = [env[n] for n in self.output_names]
            return outs[0] if len(outs) == 1 else tuple(outs)

        @staticmethod
        def _slice(x, starts, ends, axes, steps):
            index = [slice(None)] * x.dim()
            axes = range(len(starts)) if axes is None else axes
            steps = [1] * len(starts) if steps is None else steps
            for s, e, ax, st in zip(starts, ends, axes, steps):
                index[int(ax)] = slice(int(s), int(min(e, 2**62)), int(st))
            return x[tuple(index)]

        def _dequantize(self, node, at, env):
            """A DQ of a Q (activation): the fake-quantize; of a trained weight: the weight
            fake-quantized on its grid; of another initializer (int32 bias, unquantized int8): its value."""
            src = node.input[0]
            scale = self.consts[node.input[1]]
            zero = self.consts[node.input[2]] if len(node.input) > 2 and node.input[2] else torch.zeros(())
            if src in env and isinstance(env[src], tuple):
                lo, hi = _range(self.arrays, node.input[2] if len(node.input) > 2 else "")
                return torch.fake_quantize_per_tensor_affine(env[src][1], float(scale), int(zero), lo, hi)
            if src in self.trained:
                w = self.params[self.trained[src]]
                dtype = self.arrays[src].dtype
                if dtype == np.int32:  # a bias: quantized at write-back only (its step is tiny)
                    return w
                lo, hi = _weight_range(dtype)
                if scale.numel() == 1:
                    return torch.fake_quantize_per_tensor_affine(w, float(scale), int(zero), lo, hi)
                if at.get("axis", 1) != 0:
                    raise BuildError(f"{node.name}: per-channel weights on axis {at.get('axis', 1)} are not supported here")
                return torch.fake_quantize_per_channel_affine(w, scale, zero.to(torch.int32), 0, lo, hi)
            a = self.consts[src].float()
            if scale.numel() > 1:
                shape = [1] * a.dim()
                shape[at.get("axis", 1)] = -1
                scale, zero = scale.reshape(shape), zero.float().reshape(shape)
            return (a - zero.float()) * scale

    return GraphStudent


def _range(arrays: dict[str, np.ndarray], zero_point: str) -> tuple[int, int]:
    """The integer range of a Q/DQ pair, from its zero point's type (uint8 when it has none)."""
    info = np.iinfo(arrays[zero_point].dtype if zero_point else np.uint8)
    return int(info.min), int(info.max)


def _weight_range(dtype: np.dtype) -> tuple[int, int]:
    """The grid of a quantized weight of ``dtype``: int8 ones are 7-bit (:data:`WEIGHT_RANGE`), others
    span their type."""
    if dtype == np.int8:
        return WEIGHT_RANGE
    info = np.iinfo(dtype)
    return int(info.min), int(info.max)


def float_weights(fp32: "onnx.ModelProto") -> dict[str, np.ndarray]:
    """The FP32 export's convolution and Gemm weights and biases, by initializer name (what
    ``quantize_static`` names ``<name>_quantized`` in the Q/DQ graph)."""
    from onnx import numpy_helper

    init = {i.name: i for i in fp32.graph.initializer}
    out = {}
    for node in fp32.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            for name in node.input[1:]:
                if name in init:
                    out[name] = numpy_helper.to_array(init[name])
    return out


def write_back(model: "onnx.ModelProto", student) -> dict[str, Any]:
    """Write the student into ``model``, in place: its trained weights and biases quantized with the
    graph's scales and zero points into the integer initializers (scales unchanged, so a bias scale
    stays input scale × weight scale, as ONNX Runtime's integer bias needs). Returns how many tensors
    and how many integers changed."""
    from onnx import numpy_helper

    graph = model.graph
    init = {i.name: i for i in graph.initializer}
    dq_of = {}
    for n in graph.node:
        if n.op_type == "DequantizeLinear":
            dq_of.setdefault(n.input[0], n)

    def array(name: str) -> np.ndarray:
        return numpy_helper.to_array(init[name])

    def put(name: str, value: np.ndarray) -> None:
        init[name].CopyFrom(numpy_helper.from_array(value, name))

    moved, total = 0, 0
    for name, key in student.trained.items():
        node = dq_of[name]
        old = array(name)
        w = student.params[key].detach().double().numpy()
        scale = array(node.input[1]).astype(np.float64)
        zero = array(node.input[2]).astype(np.float64) if len(node.input) > 2 and node.input[2] else np.zeros(())
        if scale.size > 1:
            shape = [-1] + [1] * (w.ndim - 1)
            scale, zero = scale.reshape(shape), (zero.reshape(shape) if zero.size > 1 else zero)
        lo, hi = _weight_range(old.dtype)
        q = np.clip(np.round(w / scale) + zero, lo, hi).astype(old.dtype)
        moved += int(np.count_nonzero(q != old))
        total += q.size
        put(name, q)
    return {"tensors": len(student.trained), "integers_changed": moved, "integers": total}


def distill_graph(qdq_path, fp32_path, teacher: "torch.nn.Module", tensors: Sequence[np.ndarray], steps: int,
                  log: "BuildLog") -> dict[str, Any]:
    """Steps 2-4 of the module docstring on the Q/DQ graph at ``qdq_path`` (rewritten in place);
    ``fp32_path`` is the FP32 export it was quantized from; :data:`SCHEDULE` with ``steps`` as its
    cap. Returns the manifest record."""
    import onnx

    from . import qad

    t0 = time.perf_counter()
    model = onnx.load(str(qdq_path))
    student = _student_class()(model, float_weights(onnx.load(str(fp32_path)))).eval()
    if not student.trained:
        raise BuildError("the Q/DQ graph has no quantized weights to distil")
    x = qad.stack(tensors)
    config = qad.QadConfig(**{**SCHEDULE, "steps": steps})
    record: dict[str, Any] = {"tool": "onnxruntime.quantization + torch (the Q/DQ graph run in PyTorch)",
                              "method": "quantization-aware distillation" if steps else "post-training quantization",
                              "recipe": RECIPE,
                              "config": {"steps": steps, "lr": config.lr, "warmup": config.warmup, "schedule": config.schedule,
                                         "min_crop_area": config.min_crop_area,
                                         "activation_ranges": "the graph's (fixed)"}}
    record["distillation"] = qad.distill(student, teacher.eval(), x, config, log) if steps else None
    record["write_back"] = write_back(model, student)
    onnx.save(model, str(qdq_path))
    record["seconds"] = round(time.perf_counter() - t0, 1)
    return record
