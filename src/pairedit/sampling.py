"""The one InstructPix2Pix sampling loop, shared by text editing, VISII and the benchmark.

k-diffusion style: the sampler is a small function of (denoiser, x, sigmas), and the noise source
is a parameter, so VISII's "fixed noise" (reuse the noises recorded while learning, VISII §5
Noises) and plain random noise run the same loop. The conditioning is a tensor argument, so a
text instruction, a learned instruction and a hybrid of both are all just conditionings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

NoiseSampler = Callable[[int, torch.Tensor], torch.Tensor]  # (step index, timestep) -> noise like x


@torch.no_grad()
def encode_text(pipe, texts: list[str] | str) -> torch.Tensor:
    """Text-encoder hidden states (B, L, D) for prompts padded to the tokenizer's length, as SD does."""
    if isinstance(texts, str):
        texts = [texts]
    tok = pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return pipe.text_encoder(tok.input_ids.to(pipe.text_encoder.device))[0]


@torch.no_grad()
def encode_image_condition(pipe, pixels: torch.Tensor) -> torch.Tensor:
    """The image condition c_I: the VAE latent mode, unscaled, as InstructPix2Pix trains and samples it."""
    vae = pipe.vae
    return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode()


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor) -> torch.Tensor:
    """Latents → pixels in [-1, 1]."""
    vae = pipe.vae
    return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample.clamp(-1, 1)


def guided_eps(unet, z_t: torch.Tensor, t, image_cond: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
               s_text: float, s_image: float) -> torch.Tensor:
    """InstructPix2Pix Eq. 3: ẽ = e(∅,∅) + s_I·(e(c_I,∅) − e(∅,∅)) + s_T·(e(c_I,c_T) − e(c_I,∅)).

    The three branches run as one batch of 3B: (c_I, c_T), (c_I, ∅), (∅, ∅).
    """
    b = z_t.shape[0]
    z = torch.cat([z_t] * 3)
    img = torch.cat([image_cond, image_cond, torch.zeros_like(image_cond)])
    txt = torch.cat([cond.expand(b, -1, -1), uncond.expand(b, -1, -1), uncond.expand(b, -1, -1)])
    e_full, e_img, e_none = unet(torch.cat([z, img], dim=1), t, encoder_hidden_states=txt).sample.chunk(3)
    return combine_guidance(e_full, e_img, e_none, s_text, s_image)


def combine_guidance(e_full: torch.Tensor, e_img: torch.Tensor, e_none: torch.Tensor, s_text: float,
                     s_image: float) -> torch.Tensor:
    """The two-scale guidance of InstructPix2Pix Eq. 3 from the three branch predictions.

    Separate from ``guided_eps`` so a caller that runs the branches itself (VISII's guided loss
    runs the instruction-independent ones under no_grad) combines them with the same formula.
    """
    return e_none + s_image * (e_img - e_none) + s_text * (e_full - e_img)


def euler_ancestral_schedule(scheduler, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigmas with a final 0, model timesteps) of Euler-ancestral at ``steps`` steps for this model's schedule."""
    from diffusers import EulerAncestralDiscreteScheduler

    s = EulerAncestralDiscreteScheduler.from_config(scheduler.config)
    s.set_timesteps(steps)
    return s.sigmas.float(), s.timesteps


def sample_euler_ancestral(eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                           sigmas: torch.Tensor, timesteps: torch.Tensor, noise_sampler: NoiseSampler,
                           callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Euler-ancestral sampling (Karras et al. 2022, Alg. 2 with η = 1) of an ε-prediction model.

    ``x`` starts as noise × sigmas[0]; ``eps_fn(x_in, t)`` gets the variance-preserving input
    x / sqrt(σ² + 1), exactly what a diffusers UNet trained with DDPM expects.
    """
    for i, t in enumerate(timesteps):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        eps = eps_fn(x / (sigma**2 + 1) ** 0.5, t)
        denoised = x - sigma * eps
        sigma_up = min(sigma_next, (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
        sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
        x = denoised + (x - denoised) / sigma * sigma_down
        if sigma_next > 0:
            x = x + noise_sampler(i + 1, t) * sigma_up
        if callback is not None:
            callback(i)
    return x


def random_noise(shape: tuple[int, ...], generator: torch.Generator | None, device="cpu",
                 dtype=torch.float32) -> NoiseSampler:
    """Fresh Gaussian noise at every call, from ``generator`` (seeded for reproducible runs)."""
    def sampler(i: int, t: torch.Tensor) -> torch.Tensor:
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device, dtype)

    return sampler


@dataclass
class FixedNoise:
    """VISII §5 "Noises": reuse the noise recorded at each training timestep when sampling.

    ``table[k]`` is the noise recorded for timestep ``timesteps[k]``; a sampling step at
    timestep t takes the recorded noise of the nearest recorded timestep.
    """

    timesteps: torch.Tensor  # (K,) long
    table: torch.Tensor  # (K, C, H, W)

    def __call__(self, i: int, t: torch.Tensor) -> torch.Tensor:
        k = int((self.timesteps.float() - float(t)).abs().argmin())
        return self.table[k].unsqueeze(0)

    def initial(self) -> torch.Tensor:
        """The starting noise: the recorded noise of the largest timestep."""
        return self.table[int(self.timesteps.argmax())].unsqueeze(0)


@torch.no_grad()
def ip2p_sample(pipe, image_cond: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, *, steps: int = 20,
                s_text: float = 7.5, s_image: float = 1.5, noise: FixedNoise | None = None,
                generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Edit the images whose condition latents are ``image_cond``; returns latents (B, 4, h, w).

    ``noise=None`` draws random noise from ``generator``; a FixedNoise reuses recorded noises.
    """
    unet = pipe.unet
    b, c, h, w = image_cond.shape
    shape = (b, unet.config.out_channels, h, w)
    sigmas, timesteps = euler_ancestral_schedule(pipe.scheduler, steps)
    if noise is None:
        sampler = random_noise(shape, generator, image_cond.device, image_cond.dtype)
        x = sampler(0, timesteps[0])
    else:
        if noise.table.shape[-2:] != (h, w):
            raise ValueError(f"fixed noise was recorded at latent size {tuple(noise.table.shape[-2:])}, "
                             f"the image needs {(h, w)}: use random noise or the learning resolution")
        x = noise.initial().expand(shape).to(image_cond.device, image_cond.dtype)

        def sampler(i, t):
            return noise(i, t).expand(shape).to(image_cond.device, image_cond.dtype)

    x = x * sigmas[0]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps, desc="sampling", leave=False)

    def eps_fn(x_in, t):
        return guided_eps(unet, x_in.to(unet.dtype), t, image_cond.to(unet.dtype), cond.to(unet.dtype),
                          uncond.to(unet.dtype), s_text, s_image).to(x.dtype)

    out = sample_euler_ancestral(eps_fn, x, sigmas.to(x.device), timesteps, sampler,
                                 callback=(lambda i: bar.update(1)) if bar else None)
    if bar:
        bar.close()
    return out
