"""PyTorch → OpenVINO IR: the conversion the OpenVINO backend builds every precision from, and the
``qad`` INT8 recipe converts its distilled model with (:mod:`.openvino_int8`). A module of its own
so that neither of those imports the other."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

from ..errors import BuildError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..models import ReferenceModel


def convert(ref: "ReferenceModel", module: "torch.nn.Module | None" = None) -> Any:
    """The reference module (or ``module``, e.g. a distilled fake-quantized one of the same model) as
    an OpenVINO model: dynamic batch, input named ``input``, outputs named as the manifest names them
    (NNCF's accuracy control needs named outputs)."""
    import openvino as ov
    import torch

    c, h, w = ref.data_config.input_size
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about our model, not the user's input
        model = ov.convert_model((module or ref.module).eval(), example_input=torch.zeros(2, c, h, w),
                                 input=[ov.PartialShape([-1, c, h, w])])
    model.inputs[0].get_tensor().set_names({"input"})
    if len(model.outputs) != len(ref.output_names):
        raise BuildError(f"OpenVINO model has {len(model.outputs)} outputs, expected {len(ref.output_names)}")
    for out, name in zip(model.outputs, ref.output_names):
        out.get_tensor().set_names({name})
    return model
