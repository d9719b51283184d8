"""The Open Inference Protocol v2 (KServe v2, what Triton speaks over HTTP) on ``serve``, next to /v1.

Why: a client written for Triton — ``tritonclient.http``, perf_analyzer-style tools, KServe
gateways — works unchanged against ``serve``, and against the Triton repository ``export-triton``
writes for the same artifact: the model name (the artifact folder's name, export-triton's default),
the tensor names (``triton_io_names``: the manifest's, or ``INPUT__0``/``OUTPUT__k`` for the
libtorch and pt2 targets) and the shapes are the same in both.

Routes (every model route also under ``/versions/1``, the one version export-triton writes):

* ``GET /v2``: server metadata; ``GET /v2/health/live`` (always 200), ``/v2/health/ready`` (200
  once loaded and warmed, else 503).
* ``GET /v2/models/NAME``: model metadata (inputs/outputs with ``FP32`` datatypes and -1 for the
  batch dimension); ``GET /v2/models/NAME/ready``.
* ``POST /v2/models/NAME/infer``: a JSON request with JSON tensors (``data``: nested or flat,
  row-major) and/or the binary tensor data extension (the JSON header's length in the
  ``Inference-Header-Content-Length`` header, each binary input's size in its
  ``parameters.binary_data_size``, the bytes after the header in input order). Outputs come back
  as JSON, or binary when asked (``parameters.binary_data`` on a requested output, or the
  request's ``binary_data_output``): the answer is then ``application/octet-stream`` with its own
  ``Inference-Header-Content-Length``. The classification extension: ``parameters.classification:
  k`` on a requested output gives BYTES ``[N, k]`` strings ``"value:index[:label]"``, as Triton
  does (the raw output value with C's ``%f``, the highest first). A batch of N rows is N
  submissions to the service's batcher (each row batched with other clients' rows), gathered.
  Inputs are FP32 (FP16 and BF16 are taken too and widened to FP32 exactly); anything else is a 400.

Errors are the app's JSON ``{"error": message, ...}`` (what tritonclient reads into its
``InferenceServerException``): 400 bad request/shape/datatype, 404 unknown model or version, 413
over the body limit, 415 compressed bodies, 503 not ready or overloaded.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Awaitable, Callable

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .. import __version__
from ..errors import InputError, RexnetDeployError
from .inputs import json_body, json_tensor
from .request_body import RequestError, read_body
from .service import Service

HEADER_LENGTH = "Inference-Header-Content-Length"
VERSION = "1"  # the version folder export-triton writes; the only one served
EXTENSIONS = ["binary_tensor_data", "classification"]
# numpy dtype name → OIP datatype, for what the engines return
_OIP_DTYPES = {"float32": "FP32", "float16": "FP16", "float64": "FP64", "int64": "INT64", "int32": "INT32",
               "uint8": "UINT8", "int8": "INT8", "bool": "BOOL"}
# OIP datatype of an input → (bytes per element, little-endian numpy dtype read from the wire)
_INPUT_TYPES = {"FP32": (4, "<f4"), "FP16": (2, "<f2"), "BF16": (2, "<u2")}

Handler = Callable[[Request], Awaitable[Response]]
Endpoint = Callable[[str, Handler], Handler]


class _Model:
    """What the protocol says about the service's one model, worked out once the engine is loaded."""

    def __init__(self, service: Service) -> None:
        from ..triton import triton_io_names

        engine = service.engine
        assert engine is not None
        m = engine.manifest
        self.name = engine.artifact.path.resolve().name  # export-triton's default model name
        try:
            self.input_name, self.output_names = triton_io_names(engine.artifact)
            from .. import backends

            self.platform = backends.BACKENDS[m.backend].triton.platform
        except (RexnetDeployError, KeyError, AttributeError):  # no Triton target: the manifest's names
            self.input_name, self.output_names, self.platform = engine.input_name, list(engine.output_names), m.backend
        # the manifest's own names are accepted too (they differ only for the positional targets)
        self.input_aliases = {self.input_name, engine.input_name}
        self.output_index = {n: k for k, n in enumerate(self.output_names)}
        self.output_index.update({n: k for k, n in enumerate(engine.output_names)})
        self.row_shape = tuple(int(v) for v in engine.input_shape[1:])
        self.max_rows = int(engine.batch_range[1])
        self.labels = engine.labels if engine.head == "classify" else None
        self.metadata = {
            "name": self.name, "versions": [VERSION], "platform": self.platform,
            "inputs": [{"name": self.input_name, "datatype": _datatype(m.input.dtype), "shape": [-1, *self.row_shape]}],
            "outputs": [{"name": n, "datatype": _datatype(o.dtype), "shape": [-1, *[int(v) for v in o.shape[1:]]]}
                        for n, o in zip(self.output_names, m.outputs)],
        }


def _datatype(numpy_name: str) -> str:
    return _OIP_DTYPES.get(numpy_name, numpy_name.upper())


def oip_routes(service: Service, endpoint: Endpoint, max_body_bytes: int) -> list[Route]:
    """The /v2 routes of the app over ``service``; ``endpoint`` is the app's wrapper (counting,
    timing, the not-ready 503 and JSON errors)."""
    described: list[tuple[Any, _Model]] = []  # (engine, its description): worked out once per engine

    def model(request: Request) -> _Model:
        """The model a request names (404 for another name or version)."""
        if service.engine is None:  # (endpoint() answered 503 before this when not ready)
            raise RequestError(503, "the model is not loaded")
        if not described or described[0][0] is not service.engine:
            described[:] = [(service.engine, _Model(service))]
        found = described[0][1]
        name = request.path_params["name"]
        if name != found.name:
            raise RequestError(404, f"unknown model {name!r}: this server serves {found.name!r}")
        version = request.path_params.get("version")
        if version is not None and version != VERSION:
            raise RequestError(404, f"unknown version {version!r} of model {name!r}: the only version is {VERSION!r}")
        return found

    async def server_metadata(request: Request) -> Response:
        return JSONResponse({"name": "rexnet-deploy", "version": __version__, "extensions": EXTENSIONS})

    async def live(request: Request) -> Response:
        return Response(status_code=200)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if service.ready else 503)

    async def model_metadata(request: Request) -> Response:
        return JSONResponse(model(request).metadata)

    async def model_ready(request: Request) -> Response:
        model(request)
        return Response(status_code=200)

    async def infer(request: Request) -> Response:
        m = model(request)
        if request.headers.get("content-encoding", "identity").lower() not in ("", "identity"):
            raise RequestError(415, f"Content-Encoding {request.headers['content-encoding']} is not supported: "
                                    "send the request uncompressed")
        body = await read_body(request, max_body_bytes)
        doc, x = parse_request(body, request.headers.get(HEADER_LENGTH), m)
        rows = await asyncio.gather(*[service.batcher.submit_async(x[i]) for i in range(len(x))])
        # one row per request row; a multi-output head gives a tuple per row
        outputs = [np.stack([r[k] if isinstance(r, tuple) else r for r in rows]) for k in range(len(m.output_names))]
        return encode_response(doc, outputs, m)

    # each model route also under /versions/{version}
    def both(suffix: str) -> list[str]:
        return [f"/v2/models/{{name}}{suffix}", f"/v2/models/{{name}}/versions/{{version}}{suffix}"]

    routes = [Route("/v2", server_metadata, methods=["GET"]),
              Route("/v2/health/live", live, methods=["GET"]),
              Route("/v2/health/ready", ready, methods=["GET"])]
    for path in both(""):
        routes.append(Route(path, endpoint("oip_metadata", model_metadata), methods=["GET"]))
    for path in both("/ready"):
        routes.append(Route(path, endpoint("oip_ready", model_ready), methods=["GET"]))
    for path in both("/infer"):
        routes.append(Route(path, endpoint("oip_infer", infer), methods=["POST"]))
    return routes


# -- the codec ------------------------------------------------------------------------------
def parse_request(body: bytes, header_length: str | None, m: _Model) -> tuple[dict[str, Any], np.ndarray]:
    """An inference request body → (its JSON header, the float32 (N, C, H, W) input). The binary
    input is a view of ``body`` (FP32: no copy)."""
    if header_length is None:
        size = len(body)
    else:
        raw = header_length.strip()
        if not (raw.isascii() and raw.isdigit()) or int(raw) > len(body):
            raise RequestError(400, f"{HEADER_LENGTH} must be the JSON header's size in bytes, 0..{len(body)}; "
                                    f"got {header_length!r}")
        size = int(raw)
    # depth- and size-limited (a 100k-deep [[[...]]] is a 400, not a RecursionError)
    doc = json_body(body[:size]) if size else None
    if not isinstance(doc, dict) or not isinstance(doc.get("inputs"), list):
        raise RequestError(400, 'the inference request must be a JSON object with "inputs": [...]')
    if len(doc["inputs"]) != 1:
        names = [t.get("name") for t in doc["inputs"] if isinstance(t, dict)]
        raise RequestError(400, f"this model takes one input, {m.input_name!r}; got {len(doc['inputs'])}: {names}")
    tensor = doc["inputs"][0]
    if not isinstance(tensor, dict):
        raise RequestError(400, "each input must be a JSON object with name, shape, datatype")
    name, shape, datatype = tensor.get("name"), tensor.get("shape"), tensor.get("datatype")
    if name not in m.input_aliases:
        raise RequestError(400, f"unknown input {name!r}: this model's input is {m.input_name!r}")
    if (not isinstance(shape, list) or not all(type(v) is int and v >= 0 for v in shape)
            or len(shape) != 1 + len(m.row_shape) or tuple(shape[1:]) != m.row_shape or shape[0] < 1):
        raise InputError(f"input {name!r} must have shape [N, {', '.join(map(str, m.row_shape))}] with N >= 1, "
                         f"got {shape}")
    if shape[0] > m.max_rows:
        raise InputError(f"input {name!r}: a batch of {shape[0]} is over this model's max_batch_size {m.max_rows}")
    if datatype not in _INPUT_TYPES:
        raise InputError(f"input {name!r}: datatype {datatype!r} is not supported: send FP32 (or FP16, BF16)")
    count = int(np.prod(shape))
    itemsize, wire = _INPUT_TYPES[datatype]
    params = tensor.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, f"input {name!r}: parameters must be an object")
    if "shared_memory_region" in params:
        raise RequestError(400, "shared memory is not supported by serve: send the tensor in the request")
    binary = params.get("binary_data_size")
    rest = len(body) - size
    if binary is not None:
        if type(binary) is not int or binary != rest:
            raise RequestError(400, f"input {name!r}: binary_data_size {binary!r} must be the {rest} bytes "
                                    "after the JSON header")
        if binary != count * itemsize:
            raise InputError(f"input {name!r}: {binary} bytes of binary data for shape {shape} {datatype}; "
                             f"expected {count * itemsize}")
        x = np.frombuffer(body, dtype=wire, count=count, offset=size)
    else:
        if rest:
            raise RequestError(400, f"{rest} bytes follow the JSON header, but no input has binary_data_size")
        if "data" not in tensor:
            raise RequestError(400, f"input {name!r} has neither data nor parameters.binary_data_size")
        if datatype == "BF16":
            raise InputError(f"input {name!r}: BF16 data must be sent as binary data")
        x = json_tensor(tensor["data"], f"input {name!r}: data").reshape(-1)
        if x.size != count:
            raise InputError(f"input {name!r}: {x.size} values of data for shape {shape} ({count} values)")
    if datatype == "FP16":
        x = x.astype(np.float32)  # exact: every FP16 value is an FP32 value
    elif datatype == "BF16":
        x = (x.astype(np.uint32) << 16).view(np.float32)  # exact: BF16 is FP32's upper half
    return doc, x.reshape(shape)


def _requested(doc: dict[str, Any], m: _Model) -> list[tuple[str, int, bool, int]]:
    """(name, output index, binary, classification count) of each output to answer."""
    params = doc.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    asked = doc.get("outputs")
    if asked is None:
        return [(n, k, default_binary, 0) for k, n in enumerate(m.output_names)]
    if not isinstance(asked, list):
        raise RequestError(400, '"outputs" must be a list of {"name": ...} objects')
    chosen = []
    for out in asked:
        name = out.get("name") if isinstance(out, dict) else None
        if name not in m.output_index:
            raise RequestError(400, f"unknown output {name!r}: this model's outputs are {m.output_names}")
        p = out.get("parameters") or {}
        if not isinstance(p, dict):
            raise RequestError(400, f"output {name!r}: parameters must be an object")
        if "shared_memory_region" in p:
            raise RequestError(400, "shared memory is not supported by serve: ask for the output in the answer")
        k = p.get("classification", 0)
        if type(k) is not int or k < 0:
            raise RequestError(400, f"output {name!r}: classification must be a count >= 0, got {k!r}")
        chosen.append((name, m.output_index[name], bool(p.get("binary_data", default_binary)), k))
    return chosen


def classify(values: np.ndarray, k: int, labels: list[str] | None) -> list[list[str]]:
    """Triton's classification strings of each row: the ``k`` highest values as ``"value:index"``
    (+ ``":label"`` when the model has labels), value with C's ``%f`` as Triton's std::to_string."""
    flat = values.reshape(len(values), -1)
    k = min(k, flat.shape[1])
    order = np.argsort(-flat, axis=1, kind="stable")[:, :k]
    return [[f"{float(row[i]):f}:{i}" + (f":{labels[i]}" if labels and i < len(labels) else "") for i in idx]
            for row, idx in zip(flat, order)]


def _bytes_tensor(strings: list[str]) -> bytes:
    """The binary form of a BYTES tensor: each element's 4-byte little-endian length, then it."""
    parts = []
    for s in strings:
        b = s.encode()
        parts += [len(b).to_bytes(4, "little"), b]
    return b"".join(parts)


def encode_response(doc: dict[str, Any], outputs: list[np.ndarray], m: _Model) -> Response:
    """The inference response: JSON, or JSON header + binary outputs when any output is binary."""
    answer: dict[str, Any] = {"model_name": m.name, "model_version": VERSION}
    if isinstance(doc.get("id"), str) and doc["id"]:
        answer["id"] = doc["id"]
    tensors, blobs = [], []
    for name, k, binary, count in _requested(doc, m):
        out = outputs[k]
        if count:
            strings = classify(out, count, m.labels if k == 0 else None)
            shape = [len(strings), len(strings[0]) if strings else 0]
            t: dict[str, Any] = {"name": name, "datatype": "BYTES", "shape": shape}
            flat = [s for row in strings for s in row]
            blob = _bytes_tensor(flat) if binary else None
            data: Any = flat
        else:
            t = {"name": name, "datatype": _datatype(str(out.dtype)), "shape": list(out.shape)}
            # little-endian, row-major, as the extension says (a no-op for float32 on x86/ARM)
            blob = out.astype(out.dtype.newbyteorder("<"), copy=False).tobytes(order="C") if binary else None
            data = out.reshape(-1).tolist()
        if blob is not None:
            t["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            t["data"] = data
        tensors.append(t)
    answer["outputs"] = tensors
    header = json.dumps(answer, separators=(",", ":")).encode()
    if not blobs:
        return Response(header, media_type="application/json")
    return Response(b"".join([header, *blobs]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(header))})


__all__ = ["EXTENSIONS", "HEADER_LENGTH", "classify", "oip_routes", "parse_request"]
