"""DDIM inversion, DDIM-Edit, null-text inversion and Prompt Tuning Inversion on the tiny pipelines.

The tiny UNet has random weights, so its ε is not consistent along the ODE and a DDIM inversion
of it cannot reconstruct well. The exactness of the inversion itself is therefore tested three
ways: the step algebra, agreement with diffusers' DDIM schedulers, and a small analytic denoiser
(the exact ε of a Gaussian data distribution) that the tiny VAE/text encoder/scheduler drive.
"""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from pairedit import inversion as inv_mod
from pairedit.errors import UserError
from pairedit.inversion import (
    DDIMConfig,
    DDIMSchedule,
    Inversion,
    NTIConfig,
    PTIConfig,
    ddim_invert,
    ddim_sample,
    ddim_schedule,
    ddim_step,
    edit_latent,
    invert,
    make_config,
    prompt_tuning,
    reconstruct_latent,
)
from pairedit.sampling import encode_text
from pairedit.world import random_scene, render

SMALL = dict(steps=10, encode_ratio=0.5)  # 5 steps: short enough for CPU, long enough to show the effects


@pytest.fixture(scope="module")
def image():
    return render(random_scene(random.Random(0)))


def mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).pow(2).mean().item()


# ----------------------------------------------------------------------------------------------
# DDIM: the step, the loops, reconstruction at ω = 0


def test_ddim_step_up_then_down_is_identity():
    z, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    a_lo, a_hi = torch.tensor(0.9), torch.tensor(0.3)
    up = ddim_step(z, eps, a_lo, a_hi)  # Eq. 6
    assert torch.allclose(ddim_step(up, eps, a_hi, a_lo), z, atol=1e-5)  # Eq. 4


def test_ddim_loops_match_diffusers_schedulers(tiny):
    from diffusers import DDIMInverseScheduler, DDIMScheduler

    sd, steps = tiny.sd, 10
    emb = encode_text(sd, "")
    z0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.1
    schedule = ddim_schedule(sd, steps)
    trajectory = ddim_invert(sd, z0, schedule, emb)
    mine = ddim_sample(sd, trajectory[-1], schedule, [emb] * steps, [emb] * steps, guidance=0.0)

    up, down = DDIMInverseScheduler.from_config(sd.scheduler.config), DDIMScheduler.from_config(sd.scheduler.config)
    up.set_timesteps(steps)
    down.set_timesteps(steps)
    z = z0
    with torch.no_grad():
        for t in up.timesteps:
            z = up.step(sd.unet(z, t, encoder_hidden_states=emb).sample, t, z).prev_sample
        assert torch.allclose(z, trajectory[-1], atol=1e-5)
        for t in down.timesteps:
            z = down.step(sd.unet(z, t, encoder_hidden_states=emb).sample, t, z).prev_sample
    assert torch.allclose(z, mine, atol=1e-5)


class GaussianDenoiser(torch.nn.Module):
    """The exact ε of data ~ N(μ(c), σ²I) with μ(c) a fixed projection of the text embedding.

    A smooth, text-conditioned stand-in for a trained UNet: its DDIM ODE is consistent, so DDIM
    inversion followed by DDIM sampling (both ω = 0) must return to the start.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, dim: int, sigma: float = 0.5):
        super().__init__()
        self.proj = torch.nn.Parameter(torch.randn(dim, 4, generator=torch.Generator().manual_seed(1)) * 0.1)
        self.register_buffer("acp", alphas_cumprod.float())
        self.sigma = sigma
        self.config = SimpleNamespace(in_channels=4, sample_size=16)

    @property
    def dtype(self):
        return self.proj.dtype

    @property
    def device(self):
        return self.proj.device

    def forward(self, z, t, encoder_hidden_states):
        a = self.acp[int(t)]
        mu = (encoder_hidden_states.mean(1) @ self.proj)[:, :, None, None]
        eps = (1 - a).sqrt() * (z - a.sqrt() * mu) / (a * self.sigma**2 + 1 - a)
        return SimpleNamespace(sample=eps)


def test_ddim_inversion_then_sampling_at_w0_reconstructs(tiny, image):
    sd = tiny.sd
    unet = GaussianDenoiser(sd.scheduler.alphas_cumprod, sd.text_encoder.config.hidden_size)
    pipe = SimpleNamespace(unet=unet, vae=sd.vae, scheduler=sd.scheduler, tokenizer=sd.tokenizer,
                           text_encoder=sd.text_encoder, vae_scale_factor=sd.vae_scale_factor)
    errors = {}
    for steps in (20, 50):
        inv = invert(pipe, image, "ddim", prompt="", config=DDIMConfig(steps=steps, guidance=0.0, encode_ratio=1.0))
        z0, zT = inv.latents[0], inv.latents[-1]
        assert mse(zT, z0) > 0.5  # the inversion went far (to the noise end) …
        errors[steps] = mse(reconstruct_latent(pipe, inv), z0) / mse(zT, z0)
    assert errors[50] < 2e-3  # … and sampling came back close to z*_0
    assert errors[50] < errors[20] / 4  # the only error is DDIM's discretisation: it shrinks with the step


# ----------------------------------------------------------------------------------------------
# PTI and NTI


def test_one_pti_step_lowers_the_step_error(tiny, image):
    sd = tiny.sd
    cfg = PTIConfig(**SMALL, iterations=1)
    schedule = ddim_schedule(sd, cfg.steps, cfg.encode_ratio)
    uncond, c_init = encode_text(sd, ""), encode_text(sd, "a red circle")
    trajectory = ddim_invert(sd, inv_mod.encode_image(sd, image), schedule, uncond)
    n = len(schedule.timesteps)
    # the first timestep alone: from z*_T one DDIM step should land on z*_{T−1} (Eq. 7)
    first = DDIMSchedule(schedule.timesteps[:1], schedule.alpha[:1], schedule.alpha_prev[:1])
    pair = [trajectory[n - 1], trajectory[n]]
    (c_tuned,) = prompt_tuning(sd, pair, first, c_init, uncond, cfg)
    before = ddim_sample(sd, pair[1], first, [c_init], [uncond], cfg.guidance)
    after = ddim_sample(sd, pair[1], first, [c_tuned], [uncond], cfg.guidance)
    assert mse(after, pair[0]) < mse(before, pair[0])


def test_nti_and_pti_reconstruct_better_than_ddim_at_w75(tiny, image):
    sd, prompt = tiny.sd, "a red circle"
    errors = {}
    for method, cfg in (("ddim", DDIMConfig(**SMALL)), ("nti", NTIConfig(**SMALL)), ("pti", PTIConfig(**SMALL))):
        assert cfg.guidance == 7.5
        inv = invert(sd, image, method, prompt=prompt, config=cfg)
        errors[method] = mse(reconstruct_latent(sd, inv), inv.latents[0])
    assert errors["nti"] < errors["ddim"]
    assert errors["pti"] < errors["ddim"]


@pytest.fixture(scope="module")
def pti_and_ddim(tiny, image):
    pti = invert(tiny.sd, image, "pti", prompt="a red circle", config=PTIConfig(**SMALL))
    ddim = invert(tiny.sd, image, "ddim", prompt="a red circle", config=DDIMConfig(**SMALL))
    return pti, ddim


def test_eta_zero_reconstructs_and_eta_one_is_ddim_edit(tiny, pti_and_ddim):
    sd, target = tiny.sd, "a blue square at night"
    pti, ddim = pti_and_ddim
    assert torch.equal(pti.latents, ddim.latents)  # both start from the same ω = 0 trajectory
    ddim_edit = edit_latent(sd, ddim, target)
    assert torch.allclose(edit_latent(sd, pti, target, eta=0.0), reconstruct_latent(sd, pti), atol=1e-5)
    assert torch.allclose(edit_latent(sd, pti, target, eta=1.0), ddim_edit, atol=1e-5)
    middle = edit_latent(sd, pti, target)  # η = 0.9 lies in between
    assert not torch.allclose(middle, ddim_edit, atol=1e-4)
    # Eq. 10, latent interpolation: η = 1 is DDIM-Edit, η = 0 follows the inversion trajectory back to z*_0
    assert torch.allclose(edit_latent(sd, pti, target, eta=1.0, interpolation="latent"), ddim_edit, atol=1e-5)
    assert torch.allclose(edit_latent(sd, pti, target, eta=0.0, interpolation="latent"), pti.latents[0], atol=1e-6)


def test_eta_outside_range_refused_at_edit(tiny, pti_and_ddim):
    pti, ddim = pti_and_ddim
    with pytest.raises(UserError, match="eta"):
        edit_latent(tiny.sd, pti, "x", eta=1.5)
    with pytest.raises(UserError, match="pti"):
        edit_latent(tiny.sd, ddim, "x", eta=0.5)


# ----------------------------------------------------------------------------------------------
# Configs, saving, refusals


@pytest.mark.parametrize("method,kwargs,match", [
    ("pti", dict(eta=0.0), "eta"),
    ("pti", dict(eta=1.5), "eta"),
    ("pti", dict(guidance=-1.0), "guidance"),
    ("pti", dict(beta=0.0), "beta"),
    ("pti", dict(interpolation="spatial"), "interpolation"),
    ("pti", dict(steps=0), "steps"),
    ("nti", dict(lr=-1.0), "learning rate"),
    ("nti", dict(iterations=-2), "iterations"),
    ("ddim", dict(encode_ratio=0.0), "encode ratio"),
    ("ddim", dict(encode_ratio=1.2), "encode ratio"),
    ("ddim", dict(steps=10, encode_ratio=0.01), "no step"),
    ("ddim", dict(eta=0.5), "eta"),
    ("diffedit", dict(), "unknown inversion method"),
])
def test_config_validation(method, kwargs, match):
    with pytest.raises(UserError, match=match):
        make_config(method, **kwargs)


def test_config_defaults_follow_the_papers():
    p, n = PTIConfig(), NTIConfig()
    assert (p.steps, p.guidance, p.iterations, p.beta, p.eta, p.encode_ratio) == (50, 7.5, 1, 0.1, 0.9, 0.8)
    assert (n.steps, n.guidance, n.iterations, n.lr) == (50, 7.5, 10, 1e-2)


def test_save_load_round_trip(tiny, pti_and_ddim, tmp_path):
    pti, _ = pti_and_ddim
    path = pti.save(tmp_path / "inv.safetensors")
    loaded = Inversion.load(path)
    assert loaded.method == "pti" and loaded.prompt == pti.prompt and loaded.config == pti.config
    assert loaded.fingerprint == pti.fingerprint
    for name in ("timesteps", "latents", "conds"):
        assert torch.equal(getattr(loaded, name), getattr(pti, name))
    assert loaded.unconds is None
    for target in ("a blue square", "a green star"):  # one inversion, several targets
        assert torch.allclose(edit_latent(tiny.sd, loaded, target), edit_latent(tiny.sd, pti, target))


def test_load_refuses_other_files(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not a safetensors file")
    save_file({"x": torch.zeros(1)}, tmp_path / "other.safetensors")
    for name in ("junk.safetensors", "other.safetensors", "missing.safetensors"):
        with pytest.raises(UserError, match=name):
            Inversion.load(tmp_path / name)


def test_inversion_from_another_model_refused(tiny, pti_and_ddim):
    pti, _ = pti_and_ddim
    other = Inversion(**{**pti.__dict__, "fingerprint": "0123456789abcdef"})
    with pytest.raises(UserError, match="different model"):
        reconstruct_latent(tiny.sd, other)


@pytest.mark.parametrize("method", ["pti", "nti", "ddim"])
def test_instructpix2pix_checkpoint_refused(tiny, image, method):
    with pytest.raises(UserError, match=r"needs a text-to-image checkpoint \(4 input channels\) such as "
                                        r"runwayml/stable-diffusion-v1-5"):
        invert(tiny.ip2p, image, method)


def test_guided_ddim_inversion_is_eq5_between_the_two_embeddings(tiny):
    """ω_enc (PTI Table 1): ω = 1 is the conditional inversion, ω = 0 the unconditional one."""
    sd = tiny.sd
    cond, uncond = encode_text(sd, "a red circle"), encode_text(sd, "")
    z0 = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1)) * 0.1
    schedule = ddim_schedule(sd, 5)
    assert torch.equal(ddim_invert(sd, z0, schedule, uncond, cond, guidance=1.0)[-1],
                       ddim_invert(sd, z0, schedule, cond)[-1])
    assert torch.equal(ddim_invert(sd, z0, schedule, uncond, cond, guidance=0.0)[-1],
                       ddim_invert(sd, z0, schedule, uncond)[-1])
    assert not torch.allclose(ddim_invert(sd, z0, schedule, uncond, cond, guidance=5.0)[-1],
                              ddim_invert(sd, z0, schedule, uncond)[-1])
    with pytest.raises(ValueError):
        ddim_invert(sd, z0, schedule, uncond, guidance=2.0)
