"""InstructPix2Pix text editing and SDEdit on the tiny random-weight pipelines (code paths and contracts)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from pairedit.editing import EditConfig, SDEditConfig, ip2p_edit, resolution, sdedit
from pairedit.errors import UserError
from pairedit.world import random_scene, render


@pytest.fixture(scope="module")
def images():
    return [render(random_scene(random.Random(k))) for k in range(2)]


def same(a, b) -> bool:
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_ip2p_edit_several_images(tiny, images):
    out = ip2p_edit(tiny.ip2p, images, "make the circle red", steps=3)
    assert len(out) == 2
    assert all(im.size == (resolution(tiny.ip2p),) * 2 for im in out)
    # seeded per image: the result of an image does not depend on the rest of the list
    alone = ip2p_edit(tiny.ip2p, images[1:], "make the circle red", steps=3)
    assert same(alone[0], out[1])


def test_ip2p_edit_uses_the_shared_sampler(tiny, images, monkeypatch):
    import pairedit.sampling as sampling

    calls = []
    real = sampling.ip2p_sample

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sampling, "ip2p_sample", spy)
    ip2p_edit(tiny.ip2p, images[:1], "make it blue", steps=2, s_text=5.0, s_image=1.2)
    assert calls and calls[0]["s_text"] == 5.0 and calls[0]["s_image"] == 1.2 and calls[0]["steps"] == 2


def test_sdedit(tiny, images):
    out = sdedit(tiny.sd, images, "a red circle at night", strength=0.5, steps=4)
    assert len(out) == 2 and all(im.size == (32, 32) for im in out)
    again = sdedit(tiny.sd, images, "a red circle at night", strength=0.5, steps=4)
    assert all(same(a, b) for a, b in zip(out, again))  # seeded: reproducible
    assert type(tiny.sd.scheduler).__name__ == "DDIMScheduler"  # the caller's pipeline is left as it was


def test_models_of_the_wrong_kind_refused(tiny, images):
    with pytest.raises(UserError, match="InstructPix2Pix checkpoint"):
        ip2p_edit(tiny.sd, images, "make it red", steps=2)
    with pytest.raises(UserError, match="text-to-image checkpoint"):
        sdedit(tiny.ip2p, images, "a red circle", steps=2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"),
    (dict(s_text=-1.0), "text guidance"),
    (dict(s_image=float("nan")), "image guidance"),
])
def test_edit_config_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        EditConfig(**kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(strength=0.0), "strength"),
    (dict(strength=1.5), "strength"),
    (dict(guidance=-0.5), "guidance"),
    (dict(steps=2, strength=0.3), "no denoising step"),
])
def test_sdedit_config_validation(kwargs, match):
    with pytest.raises(UserError, match=match):
        SDEditConfig(**kwargs)


def test_config_defaults():
    assert (EditConfig().steps, EditConfig().s_text, EditConfig().s_image) == (20, 7.5, 1.5)
    assert (SDEditConfig().strength, SDEditConfig().steps, SDEditConfig().guidance) == (0.75, 50, 7.5)
