"""Shared fixtures: random-weight tiny pipelines for code paths, the bundled models for behaviour."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from pairedit.models import BUNDLED

torch.set_num_threads(int(os.environ.get("PAIREDIT_TEST_THREADS", "2")))


@pytest.fixture(scope="session")
def tiny():
    """Tiny random-weight InstructPix2Pix + text-to-image pipelines and CLIP (32×32 images, 8×8 latents)."""
    from pairedit.models import tiny_pipelines

    ip2p, sd, clip, processor = tiny_pipelines(seed=0)
    return SimpleNamespace(ip2p=ip2p, sd=sd, clip=clip, processor=processor)


@pytest.fixture(scope="session")
def tiny_bundle(tiny, tmp_path_factory):
    """The tiny pipelines saved as a bundle folder (ip2p/, sd/, clip/), as `pairedit train export` writes one."""
    root = tmp_path_factory.mktemp("tiny-bundle")
    tiny.ip2p.save_pretrained(root / "ip2p")
    tiny.sd.save_pretrained(root / "sd")
    tiny.clip.save_pretrained(root / "clip")
    tiny.processor.save_pretrained(root / "clip")
    return root


def bundled_available() -> bool:
    return all((BUNDLED[k] / f).exists() for k, f in
               (("ip2p", "model_index.json"), ("sd", "model_index.json"), ("clip", "config.json")))


requires_bundled = pytest.mark.skipif(not bundled_available(), reason="bundled models not built yet (pairedit train)")
