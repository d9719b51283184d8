"""The numpy/Pillow eval transform equals timm's torchvision one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rexnet_deploy.preprocess import PreprocessConfig, preprocess_image
from rexnet_deploy.synthetic import synthetic_images

timm = pytest.importorskip("timm")


def _timm_transform(name: str, use_test_size: bool):
    model = timm.create_model(name, pretrained=False)
    cfg = timm.data.resolve_model_data_config(model, use_test_size=use_test_size)
    return cfg, timm.data.create_transform(**cfg, is_training=False)


# Two family members with different data configs: crop_pct 0.875 at 224, and 0.95 at 224 (train
# size) or 1.0 at 288 (test size) for the in12k fine-tuned rexnetr_200.
@pytest.mark.parametrize("name,use_test_size,expect_crop", [
    ("rexnet_100", False, 0.875),
    ("rexnetr_200.sw_in12k_ft_in1k", False, 0.95),
    ("rexnetr_200.sw_in12k_ft_in1k", True, 1.0),
])
def test_matches_timm_eval_transform(name, use_test_size, expect_crop):
    cfg, transform = _timm_transform(name, use_test_size)
    ours = PreprocessConfig.from_data_config(cfg)
    assert ours.crop_pct == pytest.approx(expect_crop)
    sizes = ((500, 375), (375, 500), (333, 500), (256, 256), (1024, 683), (120, 90), (37, 300))
    for img in synthetic_images(len(sizes), seed=3, sizes=sizes):
        want = transform(img).numpy()
        got = preprocess_image(img, ours)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() <= 1e-5, (name, img.size)


def test_greyscale_and_palette_inputs_match_after_rgb_conversion():
    cfg, transform = _timm_transform("rexnet_100", False)
    ours = PreprocessConfig.from_data_config(cfg)
    grey = synthetic_images(1, seed=5)[0].convert("L")
    from rexnet_deploy.images import to_rgb

    rgb = to_rgb(grey)
    assert rgb.mode == "RGB"
    assert np.abs(preprocess_image(rgb, ours) - transform(grey.convert("RGB")).numpy()).max() <= 1e-5


def test_transparency_is_composited_on_white():
    from rexnet_deploy.images import to_rgb

    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 0))
    assert to_rgb(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_config_round_trips_through_manifest_dict():
    cfg = PreprocessConfig(input_size=(3, 288, 288), crop_pct=1.0, interpolation="bicubic")
    d = cfg.to_dict()
    assert d["resize"] == [288, 288] and d["crop"] == [288, 288]
    assert PreprocessConfig.from_data_config(d) == cfg


def test_bad_config_values_are_usage_errors():
    from rexnet_deploy.errors import UsageError

    with pytest.raises(UsageError):
        PreprocessConfig(interpolation="sinc")
    with pytest.raises(UsageError):
        PreprocessConfig(crop_mode="border")
    with pytest.raises(UsageError):
        PreprocessConfig(crop_pct=0)
