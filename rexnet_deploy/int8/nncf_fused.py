"""Fused CPU fake-quantize kernels for NNCF's quantizers while the OpenVINO student distils.

Why: a distillation step of the NNCF student cost 1.09 s against 0.45 s for the FP32 model's (batch
16 at 160 px, 2 threads), and 39% of it was NNCF's quantizer backward: its CPU extension recomputes
the forward, then makes about a dozen whole-tensor ATen passes (masks, ``masked_fill_``, sums) per
quantizer. The kernels here compute the same forward and the same gradients in one pass over the
tensor each (per-tensor or per-channel ranges), for the same rounding: the output and the input
gradient are bitwise NNCF's (no FMA contraction), the two range gradients are its sums in another
order (accumulated in float64). The loops are branch-free and compiled once per x86 instruction set
(SSE4.1 / AVX2 / AVX-512, chosen at load): rounding a vector of floats needs SSE4.1, and without it
each element called libm (a 37.8 ms backward of a 16x96x80x80 activation took 12.1 ms vectorized).
They read NCHW and channels-last (NHWC) tensors in place, in memory order, so the student can
distil channels-last (qad.QadConfig.channels_last), where oneDNN's convolutions run faster.

:func:`installed` swaps them into NNCF's CPU dispatch for the length of a ``with`` block, after a
self-check against NNCF's own kernels on small tensors; when the compile fails or the check
disagrees (another NNCF version), NNCF's kernels stay and the build log says why. The C++ is
compiled once per machine into torch's extension cache (about 25 s), as NNCF's own kernels are.
Build-time only.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..log import BuildLog

_SOURCE = r"""
#include <ATen/Parallel.h>
#include <algorithm>
#include <cmath>
#include <vector>

// One copy of each loop per x86 instruction set, chosen when the library loads: vector rounding
// needs SSE4.1, and without it every element calls libm's nearbyint (several times slower). The loops
// compute the same float32 operations on every instruction set, so the results do not depend on it.
#if defined(__x86_64__) && defined(__GNUC__)
#define RD_CLONES __attribute__((target_clones("avx512f", "avx2", "sse4.1", "default")))
#else
#define RD_CLONES
#endif

namespace {
// Ranges broadcast along one dimension: element i (in memory order) belongs to channel
// (i / inner) % C; C == 1 is one range for the whole tensor. Per channel: scale, the range's top,
// zero point, 1 / range.
struct Grid {
  std::vector<float> s, hi, zp, rr;
  Grid(const float* low, const float* range, int64_t C, int64_t levels) : s(C), hi(C), zp(C), rr(C) {
    for (int64_t c = 0; c < C; ++c) {
      s[c] = (float)(levels - 1) / range[c];
      hi[c] = low[c] + range[c];
      zp[c] = std::nearbyint(-low[c] * s[c]);
      rr[c] = 1.0f / range[c];
    }
  }
};

// The same float32 operations, in the same order, as NNCF's q_cpu_forward.
inline float quantize(float x, float lo, float hi, float s, float zp) {
  float o = std::max(std::min(x, hi), lo);
  o = o - lo; o = o * s; o = o - zp; o = std::nearbyint(o); o = o / s;
  return o;
}

template <typename F>
void for_rows(int64_t n, int64_t C, int64_t inner, F body) {
  if (C == 1) inner = 8192;  // one range: any split of the elements will do
  const int64_t rows = (n + inner - 1) / inner;
  const int64_t grain = std::max<int64_t>(1, 32768 / inner);
  at::parallel_for(0, rows, grain, [&](int64_t rb, int64_t re) {
    for (int64_t r = rb; r < re; ++r) body(r * inner, std::min<int64_t>(inner, n - r * inner), r % C);
  });
}

// x and its gradient in memory order: an NCHW or NHWC tensor's storage, not a copy
void check_dense(const at::Tensor& x, const at::Tensor* like) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_non_overlapping_and_dense(), "fused fake-quantize: dense float32 only");
  TORCH_CHECK(like == nullptr || like->strides() == x.strides(), "fused fake-quantize: gradient laid out unlike the input");
}
}  // namespace

RD_CLONES void rd_forward_row(const float* x, float* out, int64_t n, float lo, float hi, float s, float zp) {
  for (int64_t j = 0; j < n; ++j) out[j] = quantize(x[j], lo, hi, s, zp);
}

// One element's input gradient, its share of the gradient outside the range and of gradient x
// error; branch-free (the quantized value is computed for every element, then selected), so the
// loops below vectorize.
inline void grad_one(float xi, float gi, float lo, float hi, float s, float zp, float rr, float alpha, float& gx,
                     float& outside, float& weighted) {
  const bool above = xi > hi, below = xi < lo, inside = !above & !below;
  const float err_in = (quantize(xi, lo, hi, s, zp) - xi) * rr;
  const float err = inside ? err_in : (above ? 1.0f : alpha);
  gx = inside ? gi : 0.0f;
  outside = inside ? 0.0f : gi;
  weighted = err * gi;
}

// Gradients of one row. The two range-gradient sums are kept in kLanes float64 partial sums each
// (lane k takes elements k, k + kLanes, ...), an order that does not depend on the instruction set.
constexpr int kLanes = 16;
RD_CLONES void rd_backward_row(const float* x, const float* g, float* gx, int64_t n, float lo, float hi, float s,
                               float zp, float rr, float alpha, double* outside, double* weighted) {
  double out_l[kLanes] = {0}, w_l[kLanes] = {0};
  float out_c[kLanes], w_c[kLanes];
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int k = 0; k < kLanes; ++k)
      grad_one(x[j + k], g[j + k], lo, hi, s, zp, rr, alpha, gx[j + k], out_c[k], w_c[k]);
    for (int k = 0; k < kLanes; ++k) { out_l[k] += (double)out_c[k]; w_l[k] += (double)w_c[k]; }
  }
  for (int k = 0; j + k < n; ++k) {
    grad_one(x[j + k], g[j + k], lo, hi, s, zp, rr, alpha, gx[j + k], out_c[k], w_c[k]);
    out_l[k] += (double)out_c[k];
    w_l[k] += (double)w_c[k];
  }
  for (int k = 0; k < kLanes; ++k) { *outside += out_l[k]; *weighted += w_l[k]; }
}

// Channels innermost (NHWC activations with a range per channel: inner == 1): rows of C elements,
// element k of a row in channel k. Each channel's range-gradient sums run over the rows in order.
RD_CLONES void rd_forward_channels_last(const float* x, float* out, int64_t rows, int64_t C, const float* lo,
                                        const float* hi, const float* s, const float* zp) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t k = 0; k < C; ++k) out[r * C + k] = quantize(x[r * C + k], lo[k], hi[k], s[k], zp[k]);
}

RD_CLONES void rd_backward_channels_last(const float* x, const float* g, float* gx, int64_t rows, int64_t C,
                                         const float* lo, const float* hi, const float* s, const float* zp,
                                         const float* rr, float alpha, double* outside, double* weighted) {
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t k = 0; k < C; ++k) {
      float o, w;
      grad_one(x[r * C + k], g[r * C + k], lo[k], hi[k], s[k], zp[k], rr[k], alpha, gx[r * C + k], o, w);
      outside[k] += (double)o;
      weighted[k] += (double)w;
    }
  }
}

at::Tensor fq_forward(at::Tensor x, at::Tensor input_low, at::Tensor input_range, int64_t levels,
                      int64_t C, int64_t inner) {
  check_dense(x, nullptr);
  auto low = input_low.contiguous(), range = input_range.contiguous();
  const float* xp = x.data_ptr<float>();
  const float* lowp = low.data_ptr<float>();
  Grid g(lowp, range.data_ptr<float>(), C, levels);
  auto out = at::empty_like(x);  // x's strides: a dense tensor's layout is preserved
  float* op = out.data_ptr<float>();
  if (C > 1 && inner == 1) {
    at::parallel_for(0, x.numel() / C, std::max<int64_t>(1, 32768 / C), [&](int64_t rb, int64_t re) {
      rd_forward_channels_last(xp + rb * C, op + rb * C, re - rb, C, lowp, g.hi.data(), g.s.data(), g.zp.data());
    });
    return out;
  }
  for_rows(x.numel(), C, inner, [&](int64_t start, int64_t len, int64_t c) {
    rd_forward_row(xp + start, op + start, len, lowp[c], g.hi[c], g.s[c], g.zp[c]);
  });
  return out;
}

std::vector<at::Tensor> fq_backward(at::Tensor grad_output, at::Tensor x, at::Tensor input_low,
                                    at::Tensor input_range, int64_t levels, int64_t level_low,
                                    int64_t level_high, int64_t C, int64_t inner) {
  check_dense(x, &grad_output);
  auto low = input_low.contiguous(), range = input_range.contiguous();
  const float* gp = grad_output.data_ptr<float>();
  const float* xp = x.data_ptr<float>();
  const float* lowp = low.data_ptr<float>();
  Grid g(lowp, range.data_ptr<float>(), C, levels);
  const float alpha = (float)level_low / (float)level_high;
  auto grad_input = at::empty_like(x);
  float* gip = grad_input.data_ptr<float>();
  const int threads = at::get_num_threads();
  // per thread: each channel's sum of the gradient outside the range (C of them), then of gradient x error
  std::vector<double> acc((size_t)threads * 2 * C, 0.0);
  if (C > 1 && inner == 1) {
    at::parallel_for(0, x.numel() / C, std::max<int64_t>(1, 32768 / C), [&](int64_t rb, int64_t re) {
      double* a = acc.data() + (size_t)at::get_thread_num() * 2 * C;
      rd_backward_channels_last(xp + rb * C, gp + rb * C, gip + rb * C, re - rb, C, lowp, g.hi.data(), g.s.data(),
                                g.zp.data(), g.rr.data(), alpha, a, a + C);
    });
  } else {
    for_rows(x.numel(), C, inner, [&](int64_t start, int64_t len, int64_t c) {
      double* a = acc.data() + (size_t)at::get_thread_num() * 2 * C;
      rd_backward_row(xp + start, gp + start, gip + start, len, lowp[c], g.hi[c], g.s[c], g.zp[c], g.rr[c], alpha,
                      &a[c], &a[C + c]);
    });
  }
  auto grad_low = at::zeros_like(low), grad_range = at::zeros_like(range);
  float* glp = grad_low.data_ptr<float>();
  float* grp = grad_range.data_ptr<float>();
  for (int64_t c = 0; c < C; ++c) {
    double sl = 0, sr = 0;
    for (int t = 0; t < threads; ++t) {
      const double* a = acc.data() + (size_t)t * 2 * C;
      sl += a[c];
      sr += a[C + c];
    }
    glp[c] = (float)sl;
    grp[c] = (float)sr;
  }
  return {grad_input, grad_low, grad_range};
}
"""

_FUNCTIONS = ["fq_forward", "fq_backward"]


def _compile() -> Any:
    from torch.utils.cpp_extension import load_inline

    # -ffp-contract=off: no fused multiply-adds, so each product rounds as NNCF's ATen ops round it;
    # -fopenmp: at::parallel_for is OpenMP in torch's CPU builds (without it, one thread)
    return load_inline("rexnet_deploy_nncf_fused", cpp_sources=_SOURCE, functions=_FUNCTIONS,
                       extra_cflags=["-O3", "-ffp-contract=off", "-fno-trapping-math", "-fopenmp"], extra_ldflags=["-fopenmp"],
                       verbose=False)


def broadcast(x: "torch.Tensor", ranges: "torch.Tensor") -> tuple[int, int] | None:
    """(C, inner) when ``ranges`` broadcasts over ``x`` along one dimension or is one value and ``x``
    is laid out as NCHW (contiguous) or NHWC (channels-last): in memory order, element i belongs to
    channel (i // inner) % C. None for any other layout (NNCF's kernels then run)."""
    import torch

    if not (x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))):
        return None
    if ranges.numel() == 1:
        return 1, x.numel()
    dims = [i for i, s in enumerate(ranges.shape) if s != 1]
    if ranges.dim() != x.dim() or len(dims) != 1 or ranges.shape[dims[0]] != x.shape[dims[0]]:
        return None
    return int(ranges.shape[dims[0]]), int(x.stride(dims[0]))


class _Dispatch:
    """Stands in for NNCF's ``QuantizedFunctionsCPU``: its ``get`` hands out the fused kernels for
    float32 tensors with a layout they cover, NNCF's own otherwise."""

    def __init__(self, nncf_cpu: Any, kernels: Any) -> None:
        self.nncf_cpu, self.kernels = nncf_cpu, kernels
        self.calls = {"fused": 0, "nncf": 0}

    def _fits(self, *tensors: "torch.Tensor") -> tuple[int, int] | None:
        import torch

        if not all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors):
            return None
        return broadcast(tensors[0], tensors[1])

    def forward(self, x, low, range_, levels):
        fit = self._fits(x, low, range_)
        if fit is None:
            self.calls["nncf"] += 1
            return self.nncf_cpu.get("Quantize_forward")(x, low, range_, levels)
        self.calls["fused"] += 1
        return self.kernels.fq_forward(x, low, range_, int(levels), *fit)

    def backward(self, grad, x, low, range_, levels, level_low, level_high, is_asymmetric):
        import torch

        fit = self._fits(x, low, range_, grad)
        if fit is None:
            self.calls["nncf"] += 1
            return self.nncf_cpu.get("Quantize_backward")(grad, x, low, range_, levels, level_low, level_high,
                                                          is_asymmetric)
        self.calls["fused"] += 1
        if grad.stride() != x.stride():  # the kernel pairs gradient and input element by element in memory
            grad = torch.empty_like(x).copy_(grad)
        return list(self.kernels.fq_backward(grad, x, low, range_, int(levels), int(level_low), int(level_high), *fit))

    def get(self, name: str) -> Callable:
        return {"Quantize_forward": self.forward, "Quantize_backward": self.backward}.get(name) or self.nncf_cpu.get(name)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.nncf_cpu, name)


def agrees_with_nncf(dispatch: _Dispatch) -> str | None:
    """None when the fused kernels give NNCF's outputs and input gradients bit for bit and its range
    gradients to float32 rounding, on per-tensor and per-channel ranges, NCHW and NHWC; else what
    differs."""
    import torch

    gen = torch.Generator().manual_seed(0)
    nchw, nhwc = torch.contiguous_format, torch.channels_last
    cases = [((3, 8, 5, 7), (1,), 256, 0, 255), ((3, 8, 5, 7), (1, 8, 1, 1), 256, 0, 255),
             ((8, 3, 3, 3), (8, 1, 1, 1), 255, -127, 127)]  # activations per tensor / channel, weights
    for (shape, range_shape, levels, lo, hi), layout in [(c, f) for f in (nchw, nhwc) for c in cases]:
        x = (torch.randn(shape, generator=gen) * 3).contiguous(memory_format=layout)
        grad = torch.randn(shape, generator=gen)  # NCHW: the dispatch lays it out as x
        low = -torch.rand(range_shape, generator=gen) * 2 - 0.1
        range_ = torch.rand(range_shape, generator=gen) * 6 + 1
        ours = [dispatch.forward(x, low, range_, levels), *dispatch.backward(grad, x, low, range_, levels, lo, hi, True)]
        nncf_cpu = dispatch.nncf_cpu
        theirs = [nncf_cpu.get("Quantize_forward")(x, low, range_, levels),
                  *nncf_cpu.get("Quantize_backward")(grad, x, low, range_, levels, lo, hi, True)]
        # NNCF's CPU backward leaves a per-tensor range's gradient unsummed (autograd sums it)
        theirs[2:] = [t.sum_to_size(low.shape) for t in theirs[2:]]
        where = f"ranges of shape {list(range_shape)}, {'NHWC' if layout == nhwc else 'NCHW'}"
        if not (torch.equal(ours[0], theirs[0]) and torch.equal(ours[1], theirs[1])):
            return f"output or input gradient differs from NNCF's for {where}"
        if not all(torch.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(ours[2:], theirs[2:])):
            return f"range gradients differ from NNCF's for {where}"
    return None


def _one_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[-1] if lines else ''}"


@contextlib.contextmanager
def installed(log: "BuildLog") -> Iterator[dict[str, Any]]:
    """NNCF's CPU fake-quantize kernels replaced by the fused ones inside the block. Yields a record
    for the manifest: which kernels ran, and the fused kernels' call counts."""
    from nncf.torch.quantization import quantize_functions

    record: dict[str, Any] = {"fake_quantize_kernels": "nncf"}
    nncf_cpu = quantize_functions.QuantizedFunctionsCPU
    t0 = time.perf_counter()
    try:
        dispatch = _Dispatch(nncf_cpu, _compile())
    except Exception as e:  # a compiler missing or failing: NNCF's kernels still work
        why_not: str | None = f"compile failed ({_one_line(e)})"
    else:
        if time.perf_counter() - t0 > 2:
            log(f"compiled the fused fake-quantize kernels in {time.perf_counter() - t0:.0f} s (once per machine)")
        try:
            why_not = agrees_with_nncf(dispatch)
        except Exception as e:  # e.g. NNCF's kernels called another way in another version
            why_not = f"self-check failed ({_one_line(e)})"
    if why_not:
        log(f"fused fake-quantize kernels not used ({why_not}); NNCF's own run")
        record["fused_kernels_not_used"] = why_not
        yield record
        return
    dispatch.calls.update(fused=0, nncf=0)  # count the distillation's calls, not the self-check's
    record.update(fake_quantize_kernels="fused (rexnet-deploy; checked against NNCF's)",
                  fake_quantize_calls=dispatch.calls)
    log("NNCF's CPU fake-quantize kernels replaced by fused ones for the distillation (checked against NNCF's)")
    quantize_functions.QuantizedFunctionsCPU = dispatch
    try:
        yield record
    finally:
        quantize_functions.QuantizedFunctionsCPU = nncf_cpu
