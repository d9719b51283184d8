"""The ReXNet family from timm: reference modules, weights sources, heads, data config, labels, and
the layers INT8 recipes keep in floating point (named once, spelled for each quantization tool).

This is the build/reference side: it imports torch and timm (lazily, inside functions, so that
``import rexnet_deploy`` stays cheap). Runtimes never import this module.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator
from urllib.parse import urlparse

import numpy as np

from .artifact import file_sha256
from .errors import BackendUnavailable, UsageError, WeightsError, one_line
from .outputs import output_list
from .preprocess import PreprocessConfig
from .spec import HEADS, ModelSpec

if TYPE_CHECKING:  # pragma: no cover
    import torch

FAMILY_PREFIXES = ("rexnet_", "rexnetr_")


def _timm():
    try:
        import timm  # noqa: F401  (imports torch and torchvision)
    except ImportError as exc:
        raise BackendUnavailable(
            f"building needs torch and timm ({exc.name or exc} is missing): pip install 'rexnet-deploy[build]'"
        ) from None
    return timm


def family() -> list[str]:
    """Architectures and pretrained tags of the ReXNet family known to the installed timm."""
    timm = _timm()
    names = timm.list_models("rexnet*") + timm.list_pretrained("rexnet*")
    return sorted(set(n for n in names if n.startswith(FAMILY_PREFIXES)))


def validate_model_name(name: str) -> str:
    timm = _timm()
    arch, _, tag = name.partition(".")
    if not arch.startswith(FAMILY_PREFIXES) or arch not in timm.list_models("rexnet*"):
        raise UsageError(f"unknown model {name!r}; the ReXNet family is: {', '.join(timm.list_models('rexnet*'))}")
    if tag and name not in timm.list_pretrained(f"{arch}.*"):
        tags = ", ".join(timm.list_pretrained(f"{arch}.*")) or "none"
        raise UsageError(f"unknown pretrained tag {name!r}; {arch} has: {tags}")
    return name


@dataclass
class ReferenceModel:
    """An FP32 eager module for one ModelSpec, with what the manifest needs to record about it."""

    model_spec: ModelSpec
    module: "torch.nn.Module"
    data_config: PreprocessConfig
    weights_record: dict[str, Any]
    num_classes: int
    label_subset: str | None

    @property
    def output_names(self) -> list[str]:
        return output_names(self.model_spec.head)

    def probes(self, batch: tuple[int, int], *,
               eager: Callable[[np.ndarray], list[np.ndarray]] | None = None
               ) -> Iterator[tuple[int, np.ndarray, list[np.ndarray]]]:
        """What every backend proves its payload on before it is written into an artifact:
        ``(n, x, want)`` for seeded float32 NCHW inputs ``x`` at two batch sizes of ``batch`` (its
        smallest, and 3 or its largest: a dynamic batch dimension must really be dynamic), with
        the eager outputs ``want`` (``eager``: the module as the payload runs it, e.g. in FP16 on
        CUDA; default this FP32 module on CPU)."""
        import torch

        c, h, w = self.data_config.input_size
        lo, hi = batch
        for n in sorted({lo, min(hi, 3)}):
            x = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(n)).numpy()
            if eager is None:
                with torch.inference_mode():
                    want = [o.numpy() for o in output_list(self.module(torch.from_numpy(x)))]
            else:
                want = eager(x)
            yield n, x, want


def output_names(head: str) -> list[str]:
    return {"classify": ["logits"], "embed": ["embedding"]}.get(head, [f"feature{i}" for i in range(5)])


def create_reference(model_spec: ModelSpec, *, weights_override: str | os.PathLike | None = None) -> ReferenceModel:
    """Build the FP32 reference module of ``model_spec`` (eval mode, on CPU).

    The classify network is created and its weights loaded first, whatever the head: the state
    dict hash is then the same for every head, and ``embed``/``features`` derive from it.
    """
    timm = _timm()
    import torch

    validate_model_name(model_spec.name)
    if model_spec.head not in HEADS:
        raise UsageError(f"unknown head {model_spec.head!r} (one of {', '.join(HEADS)})")
    weights = model_spec.weights
    source_path = weights_override or weights.path

    if weights.source == "random":
        torch.manual_seed(weights.seed)
        model = timm.create_model(model_spec.name, pretrained=False)
        record = {"source": "random", "seed": weights.seed, "production": False,
                  "note": "randomly initialised: not for production"}
    elif weights.source == "file":
        model = timm.create_model(model_spec.name, pretrained=False)
        file_sha = load_weights_file(model, Path(source_path))
        if weights.sha256 and file_sha != weights.sha256:
            raise WeightsError(
                f"weights file {source_path} has sha256 {file_sha[:12]}…, the artifact was built from {weights.sha256[:12]}…"
            )
        record = {"source": "file", "path": str(Path(source_path).resolve()), "sha256": file_sha, "production": True}
    elif weights.source == "pretrained":
        model, record = _create_pretrained(model_spec.name)
    else:  # pragma: no cover - WeightsSpec validates this
        raise UsageError(f"unknown weights source {weights.source!r}")

    model.eval()
    record["state_sha256"] = state_dict_sha256(model)
    if weights.state_sha256 and record["state_sha256"] != weights.state_sha256:
        raise WeightsError(
            f"rebuilt {model_spec.name} weights ({weights.describe()}) differ from the artifact's "
            f"(state sha256 {record['state_sha256'][:12]}… vs {weights.state_sha256[:12]}…); "
            "the reference cannot be reproduced here (other torch/timm version?)"
        )
    data_config = PreprocessConfig.from_data_config(
        timm.data.resolve_model_data_config(model, use_test_size=model_spec.test_size)
    )
    subset = timm.data.infer_imagenet_subset(model)
    num_classes = model.num_classes

    if model_spec.head == "embed":
        model.reset_classifier(0)
    elif model_spec.head == "features":
        from timm.models import FeatureListNet

        model = FeatureListNet(model, out_indices=(0, 1, 2, 3, 4), flatten_sequential=True)
    model.eval()
    return ReferenceModel(model_spec, model, data_config, record, num_classes, subset)


def load_weights_file(model: "torch.nn.Module", path: Path) -> str:
    """Load a local .safetensors / .pth / .bin into ``model`` safely; return the file's sha256."""
    import torch

    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    if path.is_dir():
        raise WeightsError(f"weights path is a folder, expected a .safetensors/.pth/.bin file: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        elif suffix in (".pth", ".pt", ".bin", ".ckpt"):
            # weights_only: a pickle from elsewhere must not run code on load
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        else:
            raise WeightsError(f"unsupported weights file type {suffix or '(none)'}: use .safetensors, .pth or .bin")
    except WeightsError:
        raise
    except pickle.UnpicklingError:  # torch's first line here advises torch.load(weights_only=False): not for us
        raise WeightsError(f"cannot read weights file {path}: not a checkpoint of plain tensors "
                           "(damaged, or it holds objects that a safe load refuses)") from None
    except Exception as exc:  # safetensors/pickle raise many types for a damaged file
        raise WeightsError(f"cannot read weights file {path}: {one_line(exc)}") from None
    state = _unwrap_state_dict(state, path)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise WeightsError(
            f"weights file {path} does not fit {type(model).__name__}: {len(result.missing_keys)} missing keys "
            f"(e.g. {', '.join(result.missing_keys[:2]) or '-'}), {len(result.unexpected_keys)} unexpected "
            f"(e.g. {', '.join(result.unexpected_keys[:2]) or '-'})"
        )
    return file_sha256(path)


def _unwrap_state_dict(state: Any, path: Path) -> dict:
    import torch

    if isinstance(state, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} holds no state dict of tensors")
    prefix = "module."
    if state and all(k.startswith(prefix) for k in state):
        state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _create_pretrained(name: str):
    """timm's pretrained weights: from the local HF cache when there, else the hub if reachable.

    Offline, timm's own download retries for about a minute before failing with a message about
    connections; a quick reachability probe gives the user one clear line at once instead.
    """
    timm = _timm()
    model = timm.create_model(name, pretrained=False)
    cfg = model.pretrained_cfg
    hub_id = cfg.get("hf_hub_id")
    if not hub_id:
        raise WeightsError(f"timm has no pretrained weights for {name}; use --weights PATH or --weights random --seed N")
    cached = _hf_cached_file(hub_id)
    if cached is not None:
        file_sha = load_weights_file(model, cached)
        return model, {"source": "pretrained", "hub_id": hub_id, "tag": cfg.get("tag"), "sha256": file_sha,
                       "production": True}
    endpoint = _hub_endpoint()
    if not _reachable(endpoint):
        raise WeightsError(
            f"pretrained weights for {name} ({hub_id}) are not in the local cache and {endpoint} cannot be reached; "
            "use --weights PATH (a local .safetensors/.pth file) or --weights random --seed N"
        )
    try:
        model = timm.create_model(name, pretrained=True)
    except Exception as exc:
        raise WeightsError(f"downloading pretrained weights for {name} failed: {one_line(exc)}; "
                           "use --weights PATH or --weights random --seed N") from None
    cached = _hf_cached_file(hub_id)
    return model, {"source": "pretrained", "hub_id": hub_id, "tag": cfg.get("tag"),
                   "sha256": file_sha256(cached) if cached else None, "production": True}


def _hf_cached_file(hub_id: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        hit = try_to_load_from_cache(hub_id, filename)
        if isinstance(hit, str) and os.path.exists(hit):
            return Path(hit)
    return None


def _hub_endpoint() -> str:
    try:
        from huggingface_hub import constants

        if constants.HF_HUB_OFFLINE:
            return "the model hub (HF_HUB_OFFLINE is set)"
        return constants.ENDPOINT
    except ImportError:
        return os.environ.get("HF_ENDPOINT", "the model hub")


def _reachable(endpoint: str, timeout: float = 3.0) -> bool:
    url = urlparse(endpoint)
    if not url.hostname:
        return False
    try:
        with socket.create_connection((url.hostname, url.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def state_dict_sha256(model: "torch.nn.Module") -> str:
    """A hash of the parameters and buffers, independent of file format."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(str(tensor.dtype).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# -- the layers INT8 recipes keep in floating point ---------------------------------------------------
@dataclass(frozen=True)
class FloatKept:
    """A kind of ReXNet layer that INT8 recipes leave unquantized, named once by the module-name part
    timm gives it (``features.3.se.fc1``, ``features.4.conv_dw.conv``, ``head.global_pool``) and
    spelled here for each tool that is told about it."""

    module: str       # the module-name part that marks the layer
    description: str  # as manifests record it

    @property
    def onnx_mark(self) -> str:
        """The part of ONNX export node names (torch.onnx scopes: ``/features/features.3/se/fc1/Conv``)."""
        return f"/{self.module}/"

    def onnx_nodes(self, model: Any) -> list[str]:
        """The names of the nodes of this kind in an exported ``onnx.ModelProto``."""
        return [n.name for n in model.graph.node if self.onnx_mark in n.name]

    @property
    def nncf_pattern(self) -> str:
        """An NNCF ``IgnoredScope`` pattern (a regex over NNCF's PyTorch node names, ``.../se/...``)."""
        return f".*/{self.module}/.*"

    @property
    def modelopt_pattern(self) -> str:
        """A ModelOpt quantizer-name wildcard (its quantizers are named after module paths:
        ``features.3.se.fc1.input_quantizer``)."""
        return f"*{self.module}.*"


SE_GATES = FloatKept("se", "squeeze-excitation gates")
# ModelOpt (Q/DQ): TensorRT runs them in FP16 (ONNX Runtime in FP32); see int8.qad.QadConfig.float_depthwise
DEPTHWISE = FloatKept("conv_dw", "depthwise convolutions (FP16 on TensorRT)")
# The head's global-pool input (1280 SiLU channels): the one activation quantizer that cost most, 2.4 dB
# of 31.9 on held-out calibration photos (each quantizer switched off alone); pooling gains nothing from int8.
GLOBAL_POOL = FloatKept("global_pool", "the global-pool input")
FLOAT_KEPT = (SE_GATES, DEPTHWISE, GLOBAL_POOL)
# The classifier head (global pool, flatten, fc): FP32 in ONNX Runtime's u8 graph (backends.onnxruntime._head_nodes)
HEAD = FloatKept("head", "the classifier head")
# The stem (3x3 convolution + SiLU at 112x112): FP32 in ONNX Runtime's u8 graph too; its three activation
# quantizers (convolution output, sigmoid, product) were the most damaging of the graph's 139, each switched
# off alone on calibration photos, and it is 3% of the network's multiply-adds
STEM = FloatKept("stem", "the stem convolution and its SiLU")


def fold_batchnorm(model: "torch.nn.Module") -> "torch.nn.Module":
    """Fold every BatchNorm into the convolution before it (timm's ConvNormAct keeps its activation;
    the SE block's BatchNorm folds into fc1): quantized weights must be the ones the engine
    multiplies with, and TensorRT cannot fold a BatchNorm into an already quantized convolution."""
    import torch
    from timm.layers import ConvNormAct
    from timm.models.rexnet import SEModule
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    for mod in model.modules():
        if isinstance(mod, ConvNormAct):
            bn = mod.bn
            mod.conv = fuse_conv_bn_eval(mod.conv, bn)
            mod.bn = torch.nn.Sequential(getattr(bn, "drop", torch.nn.Identity()), getattr(bn, "act", torch.nn.Identity()))
        elif isinstance(mod, SEModule) and isinstance(mod.bn, torch.nn.BatchNorm2d):
            mod.fc1 = fuse_conv_bn_eval(mod.fc1, mod.bn)
            mod.bn = torch.nn.Identity()
    return model


def imagenet_labels(subset: str | None, num_classes: int) -> tuple[list[str], list[str]] | None:
    """(descriptions, synset ids) in class-index order from timm's ImageNetInfo, or None."""
    if not subset:
        return None
    from timm.data import ImageNetInfo

    info = ImageNetInfo(subset)
    names = info.label_names()
    if len(names) != num_classes:
        return None
    return [info.index_to_description(i) for i in range(num_classes)], list(names)
