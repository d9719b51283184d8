"""INT8 for every backend that has it: the recipes and their one resolution (:mod:`.recipes`),
quantization-aware distillation in PyTorch (:mod:`.qad`), ModelOpt's passes on ONNX graphs
(:mod:`.modelopt_passes`), TensorRT's rules for Q/DQ graphs (:mod:`.qdq`) and the per-layer-group
sensitivity sweep (:mod:`.sensitivity`).

Which ReXNet layers the recipes keep in floating point is the model family's knowledge
(:data:`rexnet_deploy.models.FLOAT_KEPT`), spelled there for each tool.

Only builds import the heavy parts (torch, NNCF, ModelOpt, onnx), inside functions; importing this
package or :mod:`.recipes` costs nothing.
"""
