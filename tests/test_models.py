"""The one model loader: what it accepts and the one-line errors for checkpoints pairedit cannot use."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from conftest import requires_bundled
from pairedit import models


def _with_prediction_type(src, dest, kind: str):
    shutil.copytree(src, dest)
    cfg_path = dest / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = kind
    cfg_path.write_text(json.dumps(cfg))
    return dest


def test_loads_the_tiny_bundle(tiny_bundle):
    assert models.load_ip2p(str(tiny_bundle / "ip2p")).unet.config.in_channels == 8
    assert models.load_sd(str(tiny_bundle / "sd")).unet.config.in_channels == 4


@pytest.mark.parametrize("stage, loader", [("ip2p", models.load_ip2p), ("sd", models.load_sd)])
def test_v_prediction_checkpoint_is_refused_by_name(tiny_bundle, tmp_path, stage, loader):
    folder = _with_prediction_type(tiny_bundle / stage, tmp_path / stage, "v_prediction")
    with pytest.raises(models.ModelNotAvailable, match="predicts 'v_prediction'.*ε-prediction"):
        loader(str(folder))


def test_wrong_kind_of_unet_is_refused(tiny_bundle):
    with pytest.raises(models.ModelNotAvailable, match="8 channels"):
        models.load_ip2p(str(tiny_bundle / "sd"))
    with pytest.raises(models.ModelNotAvailable, match="4 channels"):
        models.load_sd(str(tiny_bundle / "ip2p"))


@requires_bundled
def test_bundled_diffusion_models_share_clips_text_tower():
    """As in Stable Diffusion, the text encoder of both bundled pipelines is CLIP's text tower (issue #2)."""
    from safetensors.torch import load_file

    clip = load_file(models.BUNDLED["clip"] / "model.safetensors")
    tower = {k.removeprefix("text_model."): v for k, v in clip.items() if k.startswith("text_model.")}
    for kind in ("sd", "ip2p"):
        encoder = load_file(models.BUNDLED[kind] / "text_encoder" / "model.safetensors")
        assert encoder.keys() == tower.keys(), kind
        assert all(torch.equal(encoder[k], tower[k]) for k in tower), kind
