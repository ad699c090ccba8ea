"""Inverting a real image into a text-to-image model, and editing it with a target caption.

Three methods, all on one deterministic DDIM trajectory and one sampling loop:

- **DDIM-Edit** (baseline of PTI §1): DDIM inversion with ω = 0 (PTI Eq. 6), then DDIM sampling from
  z*_T with the target prompt under classifier-free guidance ω (Eq. 4, 5).
- **Null-text inversion** (NTI, Mokady et al. 2023): per timestep, optimise the *unconditional*
  embedding ∅_t so one guided DDIM step from the current latent lands on z*_{t−1}.
- **Prompt Tuning Inversion** (PTI, Dong et al. 2023, Algorithm 1): per timestep, optimise the
  *conditional* embedding c_t the same way (Eq. 7, 8); edit by sampling with
  c_t ← η·c* + (1−η)·c_t (Eq. 9, condition interpolation) or by pulling the target-prompt DDIM
  latents towards the inversion trajectory (Eq. 10, latent interpolation).

Pieces: ``ddim_schedule`` (timesteps and ᾱ of the DDIM sampler, cut by the encoding ratio),
``ddim_step`` (Eq. 4 and Eq. 6 are the same update), ``ddim_invert`` (the trajectory {z*_t}),
``ddim_sample`` (the ONE sampling loop, with a per-timestep conditioning list c_t and
unconditional list ∅_t), ``null_text_optimization`` and ``prompt_tuning`` (the two optimisers).
``invert`` returns an ``Inversion`` that can be saved (safetensors + JSON metadata), reloaded and
reused: ``reconstruct`` and ``edit`` sample from it, ``edit`` for as many targets as wanted.

Command line::

    pairedit invert photo.png --method pti --target "a red circle at night" -o out/ --save out/inv.safetensors
    pairedit invert --load out/inv.safetensors --target "a blue circle at night" --eta 0.7 -o out2/
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from .errors import UserError

METHODS = ("ddim", "nti", "pti")
FORMAT = "pairedit.inversion/1"


# ----------------------------------------------------------------------------------------------
# Configs: defaults from the papers, checks shared by the library and the CLI


def _check_common(cfg) -> None:
    if not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise UserError(f"steps must be a positive whole number, got {cfg.steps!r}")
    if not cfg.guidance >= 0:
        raise UserError(f"guidance must be ≥ 0, got {cfg.guidance}")
    if not 0 < cfg.encode_ratio <= 1:
        raise UserError(f"encode ratio must be in (0, 1], got {cfg.encode_ratio}")
    if round(cfg.steps * cfg.encode_ratio) < 1:
        raise UserError(f"encode ratio {cfg.encode_ratio} × {cfg.steps} steps leaves no step to invert")


@dataclass(frozen=True)
class DDIMConfig:
    """DDIM inversion (ω = 0) + guided DDIM sampling: the DDIM-Edit baseline of PTI."""

    steps: int = 50  # PTI §4.1: a 50-step DDIM schedule, Stable Diffusion's other settings kept
    guidance: float = 7.5  # ω when sampling (PTI §4.3, Table 2)
    encode_ratio: float = 0.8  # PTI §4.2, Fig. 4: "for all methods … the DDIM encoding ratio [is] 0.8"
    invert_guidance: float = 0.0  # ω_enc of the inversion itself; PTI Eq. 6 and §4.3 use ω = 0 (Table 1 varies it)

    def __post_init__(self) -> None:
        _check_common(self)
        if not self.invert_guidance >= 0:
            raise UserError(f"inversion guidance must be ≥ 0, got {self.invert_guidance}")


@dataclass(frozen=True)
class NTIConfig:
    """Null-text inversion (Mokady et al. 2023): optimise ∅_t per timestep, c fixed to the source prompt.

    Mokady et al. invert with ω = 1 and the source prompt; here, as in PTI's comparison (§4.3,
    "ω = 0 for the DDIM forward process"), every method shares the ω = 0 trajectory. Their code
    also stops the inner loop early once the step's loss is tiny, which ``early_stop`` does.
    """

    steps: int = 50  # Mokady §4: 50 DDIM steps
    guidance: float = 7.5  # Mokady §3: ω = 7.5, Stable Diffusion's default
    iterations: int = 10  # Mokady §3.3: N = 10 inner iterations per timestep
    lr: float = 1e-2  # Mokady §3.3: Adam, learning rate 0.01
    encode_ratio: float = 1.0  # NTI inverts the whole diffusion (z*_T is pure noise level)
    early_stop: float = 1e-5  # stop a timestep's iterations once the MSE is below this (Mokady's code)

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise UserError(f"iterations must be a whole number ≥ 0, got {self.iterations!r}")
        if not self.lr > 0:
            raise UserError(f"learning rate must be > 0, got {self.lr}")


@dataclass(frozen=True)
class PTIConfig:
    """Prompt Tuning Inversion (Dong et al. 2023, Algorithm 1); defaults from PTI §4.1.

    β is the step of the update of c_t (Alg. 1 line 9). Table 3 treats it as a learning rate shared
    with NTI, whose optimiser is Adam; Adam is used here too, which also makes β independent of the
    latent size (a plain gradient step on ||·||² is not).
    """

    steps: int = 50  # §4.1: 50 DDIM steps
    guidance: float = 7.5  # ω while tuning and editing (§4.3: ω = 7.5)
    iterations: int = 1  # §4.1: N = 1 iteration per diffusion step
    beta: float = 0.1  # §4.1: β = 0.1
    eta: float = 0.9  # §4.1: η = 0.9, condition interpolation Eq. 9; the paper takes η ∈ (0, 1]
    encode_ratio: float = 0.8  # §4.1: encoding ratio 0.8 — invert and edit over the last 80% of the steps
    interpolation: str = "condition"  # Eq. 9 "condition" (the paper's method) or Eq. 10 "latent"

    def __post_init__(self) -> None:
        _check_common(self)
        if not isinstance(self.iterations, int) or self.iterations < 0:
            raise UserError(f"iterations must be a whole number ≥ 0, got {self.iterations!r}")
        if not self.beta > 0:
            raise UserError(f"beta must be > 0, got {self.beta}")
        if not 0 < self.eta <= 1:
            raise UserError(f"eta must be in (0, 1], got {self.eta}")
        if self.interpolation not in ("condition", "latent"):
            raise UserError(f"unknown interpolation {self.interpolation!r}; choose 'condition' (Eq. 9) or 'latent' (Eq. 10)")


CONFIGS = {"ddim": DDIMConfig, "nti": NTIConfig, "pti": PTIConfig}
Config = DDIMConfig | NTIConfig | PTIConfig


def make_config(method: str, **overrides) -> Config:
    """The method's config with the given settings (``None`` = the default); refuses settings it lacks."""
    if method not in CONFIGS:
        raise UserError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")
    cls = CONFIGS[method]
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(given) - names)
    if unknown:
        raise UserError(f"{', '.join(unknown)} does not apply to --method {method}")
    return cls(**given)


# ----------------------------------------------------------------------------------------------
# DDIM: schedule, one step, inversion, sampling


@dataclass
class DDIMSchedule:
    """The DDIM timesteps actually run (descending, t_n > … > t_1) and their ᾱ values.

    ``alpha[i]`` is ᾱ at ``timesteps[i]``; ``alpha_prev[i]`` is ᾱ one DDIM step lower (the
    scheduler's final ᾱ after the last step).
    """

    timesteps: torch.Tensor
    alpha: torch.Tensor
    alpha_prev: torch.Tensor


def ddim_schedule(pipe, steps: int, encode_ratio: float = 1.0) -> DDIMSchedule:
    """The model's DDIM schedule at ``steps`` steps, keeping the lowest ``encode_ratio`` fraction of them.

    The encoding ratio (DiffEdit, PTI §4.1) says how far the image is inverted: 0.8 inverts and edits
    over the last 40 of 50 steps, starting from z*_{0.8T} instead of pure noise.
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    if sched.config.prediction_type != "epsilon":
        raise UserError(f"inversion needs an ε-prediction model (Stable Diffusion 1.x); this one predicts "
                        f"{sched.config.prediction_type!r}")
    sched.set_timesteps(steps)
    n = round(steps * encode_ratio)
    timesteps = sched.timesteps[-n:].long()
    prev = timesteps - sched.config.num_train_timesteps // steps
    acp = sched.alphas_cumprod.float()
    alpha_prev = torch.where(prev >= 0, acp[prev.clamp(min=0)], sched.final_alpha_cumprod.float())
    return DDIMSchedule(timesteps, acp[timesteps], alpha_prev)


def ddim_step(z: torch.Tensor, eps: torch.Tensor, alpha_from: torch.Tensor, alpha_to: torch.Tensor) -> torch.Tensor:
    """Move z from noise level ᾱ_from to ᾱ_to along the predicted noise: PTI Eq. 4 (down) and Eq. 6 (up).

    z' = √ᾱ_to · f(z) + √(1−ᾱ_to) · ε, with f(z) = (z − √(1−ᾱ_from)·ε) / √ᾱ_from the predicted z_0.
    """
    z0 = (z - (1 - alpha_from).sqrt() * eps) / alpha_from.sqrt()
    return alpha_to.sqrt() * z0 + (1 - alpha_to).sqrt() * eps


def unet_eps(unet, z: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
    """ε_θ(z, t, emb) in float32 (the UNet may run in half precision)."""
    return unet(z.to(unet.dtype), t, encoder_hidden_states=emb.to(unet.dtype)).sample.float()


def guided(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, guidance: float) -> torch.Tensor:
    """Classifier-free guidance, PTI Eq. 5: ε̃ = ε(∅) + ω·(ε(c) − ε(∅))."""
    return eps_uncond + guidance * (eps_cond - eps_uncond)


def cfg_eps(unet, z: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
            guidance: float) -> torch.Tensor:
    """Eq. 5, skipping the branch that ω = 0 (only ∅) or ω = 1 (only c) does not need."""
    if guidance == 0:
        return unet_eps(unet, z, t, uncond)
    if guidance == 1:
        return unet_eps(unet, z, t, cond)
    return guided(unet_eps(unet, z, t, uncond), unet_eps(unet, z, t, cond), guidance)


def _bar(total: int, desc: str, progress: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, leave=False, disable=not progress)


@torch.no_grad()
def ddim_invert(pipe, z0: torch.Tensor, schedule: DDIMSchedule, uncond: torch.Tensor,
                cond: torch.Tensor | None = None, guidance: float = 0.0, progress: bool = False) -> list[torch.Tensor]:
    """DDIM inversion (PTI Eq. 6): the trajectory [z*_0, z*_1, …, z*_n] from the clean latent up.

    ε is guided with ω = ``guidance`` between ``uncond`` and ``cond`` (PTI Eq. 5); the default ω = 0
    is the unconditional inversion all three methods here use, other ω are PTI Table 1's ω_enc.
    Step i goes from ᾱ_prev[i] up to ᾱ[i] with ε(z, t_i), the convention of diffusers'
    DDIMInverseScheduler.
    """
    if guidance != 0 and cond is None:
        raise ValueError("DDIM inversion with guidance ω ≠ 0 needs the conditional embedding")
    trajectory = [z0.float()]
    z = z0.float()
    with _bar(len(schedule.timesteps), "DDIM inversion", progress) as bar:
        for i in reversed(range(len(schedule.timesteps))):
            eps = cfg_eps(pipe.unet, z, schedule.timesteps[i], cond if cond is not None else uncond, uncond, guidance)
            z = ddim_step(z, eps, schedule.alpha_prev[i], schedule.alpha[i])
            trajectory.append(z)
            bar.update(1)
    return trajectory


@torch.no_grad()
def ddim_sample(pipe, z: torch.Tensor, schedule: DDIMSchedule, conds: list[torch.Tensor],
                unconds: list[torch.Tensor], guidance: float, latent_eta: float | None = None,
                trajectory: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Deterministic DDIM sampling (PTI Eq. 4) with CFG ω (Eq. 5) from ``z`` at timesteps[0] down to z_0.

    ``conds[i]`` and ``unconds[i]`` are the c_t and ∅_t of step i (lists, so NTI's ∅_t and PTI's c_t
    are just conditionings). With ``latent_eta`` set, every new latent is pulled towards the
    inversion ``trajectory``: z ← η·z + (1−η)·z*_t (PTI Eq. 10, latent interpolation).
    """
    n = len(schedule.timesteps)
    z = z.float()
    for i, t in enumerate(schedule.timesteps):
        eps = cfg_eps(pipe.unet, z, t, conds[i], unconds[i], guidance)
        z = ddim_step(z, eps, schedule.alpha[i], schedule.alpha_prev[i])
        if latent_eta is not None:
            z = latent_eta * z + (1 - latent_eta) * trajectory[n - i - 1]
    return z


# ----------------------------------------------------------------------------------------------
# The two optimisers: null-text inversion (∅_t) and prompt tuning (c_t)


def null_text_optimization(pipe, trajectory: list[torch.Tensor], schedule: DDIMSchedule, cond: torch.Tensor,
                           uncond: torch.Tensor, cfg: NTIConfig, progress: bool = False) -> list[torch.Tensor]:
    """Mokady et al. 2023, Alg. 1: per timestep, ∅_t = argmin ||z*_{t−1} − z_{t−1}(z̄_t, t, c, ∅_t)||²; returns [∅_t]."""
    unet, s = pipe.unet, schedule
    n = len(s.timesteps)
    z = trajectory[n]  # z̄_T ← z*_T
    null = uncond.detach().float().clone()  # ∅_T ← τ("")
    nulls = []
    with _bar(n, "null-text optimisation", progress) as bar:
        for i, t in enumerate(s.timesteps):
            target = trajectory[n - i - 1]  # z*_{t−1}
            with torch.no_grad():
                eps_c = unet_eps(unet, z, t, cond)  # the conditional branch does not depend on ∅_t
            null = null.detach().requires_grad_(True)
            opt = torch.optim.Adam([null], lr=cfg.lr)
            for _ in range(cfg.iterations):
                z_prev = ddim_step(z, guided(unet_eps(unet, z, t, null), eps_c, cfg.guidance), s.alpha[i], s.alpha_prev[i])
                loss = F.mse_loss(z_prev, target)
                if loss.item() < cfg.early_stop:
                    break
                opt.zero_grad()
                loss.backward(inputs=[null])
                opt.step()
            null = null.detach()
            nulls.append(null)  # ∅_{t−1} starts from ∅_t
            with torch.no_grad():  # z̄_{t−1} = z_{t−1}(z̄_t, t, c, ∅_t)
                z = ddim_step(z, guided(unet_eps(unet, z, t, null), eps_c, cfg.guidance), s.alpha[i], s.alpha_prev[i])
            bar.update(1)
    return nulls


def prompt_tuning(pipe, trajectory: list[torch.Tensor], schedule: DDIMSchedule, c_init: torch.Tensor,
                  uncond: torch.Tensor, cfg: PTIConfig, progress: bool = False) -> list[torch.Tensor]:
    """PTI Algorithm 1, lines 4–12 (Eq. 7, 8): tune c_t per timestep so one guided DDIM step hits z*_{t−1}.

    Returns [c_t] in sampling order. The unconditional branch ε(z̃_t, ∅) does not depend on c_t and
    is computed once per timestep; the gradient flows only into c_t (UNet weights stay frozen).
    """
    unet, s = pipe.unet, schedule
    n = len(s.timesteps)
    z = trajectory[n]  # line 6: z̃_T ← z*_T
    c = c_init.detach().float().clone()  # line 6: c_T ← the initial prompt embedding
    conds = []
    with _bar(n, "prompt tuning", progress) as bar:
        for i, t in enumerate(s.timesteps):  # line 7: t = T, …, 1
            target = trajectory[n - i - 1]  # z*_{t−1}
            with torch.no_grad():
                eps_u = unet_eps(unet, z, t, uncond)
            c = c.detach().requires_grad_(True)
            opt = torch.optim.Adam([c], lr=cfg.beta)
            for _ in range(cfg.iterations):  # lines 8–10: N updates of c_t (Eq. 7)
                z_prev = ddim_step(z, guided(eps_u, unet_eps(unet, z, t, c), cfg.guidance), s.alpha[i], s.alpha_prev[i])
                loss = F.mse_loss(z_prev, target)  # ||z*_{t−1} − z_{t−1}(z̃_t, t, c_t)||² (mean: same minimiser)
                opt.zero_grad()
                loss.backward(inputs=[c])
                opt.step()
            c = c.detach()
            conds.append(c)  # line 11: c_{t−1} ← c_t (warm start of the next timestep)
            with torch.no_grad():  # line 11, Eq. 8: z̃_{t−1} = z_{t−1}(z̃_t, t, c_t)
                z = ddim_step(z, guided(eps_u, unet_eps(unet, z, t, c), cfg.guidance), s.alpha[i], s.alpha_prev[i])
            bar.update(1)
    return conds


def interpolate_conditions(conds: list[torch.Tensor], target: torch.Tensor, eta: float) -> list[torch.Tensor]:
    """PTI Eq. 9 (Alg. 1 line 16): c_t ← η·c* + (1−η)·c_t. η = 0 reconstructs, η = 1 is DDIM-Edit."""
    return [eta * target + (1 - eta) * c for c in conds]


# ----------------------------------------------------------------------------------------------
# The result of an inversion, and using it


@dataclass
class Inversion:
    """Everything needed to reconstruct or edit one image without inverting it again.

    ``latents[k]`` is z*_k of the ω = 0 DDIM inversion (k = 0 the image's latent, k = n the start
    of sampling); ``timesteps`` the n sampling timesteps, descending. ``conds`` holds PTI's c_t and
    ``unconds`` NTI's ∅_t, one per sampling step (None for methods that do not learn them).
    ``prompt`` is the source caption: the conditioning of DDIM/NTI, the initial c_T of PTI.
    """

    method: str
    config: Config
    prompt: str
    timesteps: torch.Tensor  # (n,) long
    latents: torch.Tensor  # (n + 1, 1, C, h, w)
    conds: torch.Tensor | None = None  # (n, 1, L, D)
    unconds: torch.Tensor | None = None  # (n, 1, L, D)
    fingerprint: str = ""  # of the UNet the inversion was made with (models.fingerprint)

    def save(self, path: str | Path) -> Path:
        """Write tensors as safetensors, everything else as JSON in the file's metadata (atomic)."""
        from safetensors.torch import save_file

        from .images import atomic_write

        tensors = {"timesteps": self.timesteps.cpu(), "latents": self.latents.float().cpu()}
        for name in ("conds", "unconds"):
            if getattr(self, name) is not None:
                tensors[name] = getattr(self, name).float().cpu()
        meta = dict(format=FORMAT, method=self.method, prompt=self.prompt, config=asdict(self.config),
                    fingerprint=self.fingerprint)
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata={"pairedit": json.dumps(meta)}))

    @classmethod
    def load(cls, path: str | Path) -> Inversion:
        """Read a file written by ``save`` (never unpickles anything)."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such inversion file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("pairedit", "{}"))
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as err:
            raise UserError(f"{path}: not a readable safetensors file ({err})") from err
        if meta.get("format") != FORMAT or meta.get("method") not in METHODS:
            raise UserError(f"{path}: not a pairedit inversion (expected format {FORMAT})")
        return cls(method=meta["method"], config=CONFIGS[meta["method"]](**meta["config"]), prompt=meta["prompt"],
                   timesteps=tensors["timesteps"], latents=tensors["latents"], conds=tensors.get("conds"),
                   unconds=tensors.get("unconds"), fingerprint=meta.get("fingerprint", ""))


def check_text_to_image(pipe, method: str) -> None:
    """Refuse a model the method cannot run on, naming the checkpoint kind it needs."""
    channels = pipe.unet.config.in_channels
    if channels != 4:
        raise UserError(f"{method.upper()} needs a text-to-image checkpoint (4 input channels) such as "
                        f"runwayml/stable-diffusion-v1-5; this UNet takes {channels} (an InstructPix2Pix model?)")


def _schedule_for(pipe, inv: Inversion) -> DDIMSchedule:
    from .models import fingerprint

    check_text_to_image(pipe, inv.method)
    if inv.fingerprint and fingerprint(pipe.unet) != inv.fingerprint:
        raise UserError("this inversion was made with a different model; invert the image again with this one")
    schedule = ddim_schedule(pipe, inv.config.steps, inv.config.encode_ratio)
    if not torch.equal(schedule.timesteps.cpu(), inv.timesteps.cpu()):
        raise UserError("this inversion was made with a different noise schedule; invert the image again")
    return schedule


def _embed(pipe, prompt: str) -> torch.Tensor:
    from .sampling import encode_text

    return encode_text(pipe, prompt).float()


def _decode(pipe, z: torch.Tensor) -> Image.Image:
    from .images import to_pil
    from .sampling import decode_latents

    return to_pil(decode_latents(pipe, z))[0]


def encode_image(pipe, image: Image.Image) -> torch.Tensor:
    """z*_0 = ENC(I): the image fitted to the model's resolution, VAE latent mode, scaled as SD samples it."""
    from .editing import resolution
    from .images import fit, to_tensor

    vae = pipe.vae
    pixels = to_tensor(fit(image, resolution(pipe))).to(vae.device, vae.dtype)
    with torch.no_grad():
        return vae.encode(pixels).latent_dist.mode().float() * vae.config.scaling_factor


def invert(pipe, image: Image.Image, method: str = "pti", prompt: str = "", config: Config | None = None,
           progress: bool = False) -> Inversion:
    """Invert ``image`` with DDIM, null-text inversion or Prompt Tuning Inversion (see the module docstring).

    ``prompt`` is the source caption (may be empty): DDIM and NTI condition on it; PTI starts c_T
    from it (Alg. 1 line 6 starts from the target prompt, so pass the target when no source is known).
    """
    from .models import fingerprint

    cfg = config if config is not None else make_config(method)
    if method not in CONFIGS:
        raise UserError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")
    if not isinstance(cfg, CONFIGS[method]):
        raise UserError(f"--method {method} needs a {CONFIGS[method].__name__}, got a {type(cfg).__name__}")
    check_text_to_image(pipe, method)
    schedule = ddim_schedule(pipe, cfg.steps, cfg.encode_ratio)
    cond, uncond = _embed(pipe, prompt), _embed(pipe, "")
    # 1. Encode the image: z*_0 = ENC(I)
    z0 = encode_image(pipe, image)
    # 2. DDIM inversion (PTI Eq. 6, Alg. 1 lines 2–3): ω = 0, as NTI and PTI tune along that trajectory;
    #    plain DDIM may set another ω_enc (Table 1)
    omega_enc = cfg.invert_guidance if isinstance(cfg, DDIMConfig) else 0.0
    trajectory = ddim_invert(pipe, z0, schedule, uncond, cond, omega_enc, progress)
    # 3. Optimise the per-timestep embedding along the trajectory
    conds = unconds = None
    if method == "nti":
        unconds = torch.stack(null_text_optimization(pipe, trajectory, schedule, cond, uncond, cfg, progress)).cpu()
    elif method == "pti":
        conds = torch.stack(prompt_tuning(pipe, trajectory, schedule, cond, uncond, cfg, progress)).cpu()
    return Inversion(method=method, config=cfg, prompt=prompt, timesteps=schedule.timesteps.cpu(),
                     latents=torch.stack(trajectory).cpu(), conds=conds, unconds=unconds,
                     fingerprint=fingerprint(pipe.unet))


def _conditionings(pipe, inv: Inversion, c: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-step (c_t, ∅_t) lists with the given conditional ``c`` and the inversion's learned null texts."""
    n = len(inv.timesteps)
    unconds = list(inv.unconds) if inv.unconds is not None else [_embed(pipe, "")] * n
    return [c] * n, unconds


def reconstruct_latent(pipe, inv: Inversion) -> torch.Tensor:
    """Sample from z*_T with the inversion's own conditioning under its ω: DDIM with the source prompt,
    NTI with the source prompt and ∅_t, PTI with the tuned c_t."""
    schedule = _schedule_for(pipe, inv)
    device = pipe.unet.device
    conds, unconds = _conditionings(pipe, inv, _embed(pipe, inv.prompt))
    if inv.conds is not None:
        conds = list(inv.conds)
    z_T = inv.latents[-1].to(device)
    return ddim_sample(pipe, z_T, schedule, [c.to(device) for c in conds], [u.to(device) for u in unconds],
                       inv.config.guidance)


def edit_latent(pipe, inv: Inversion, target: str, eta: float | None = None,
                interpolation: str | None = None) -> torch.Tensor:
    """Sample the edit towards the ``target`` caption from z*_T under the inversion's ω.

    DDIM: DDIM-Edit (c* and ∅). NTI: c* with the learned ∅_t (NTI without Prompt-to-Prompt).
    PTI: condition interpolation c_t ← η·c* + (1−η)·c_t (Eq. 9), or latent interpolation (Eq. 10).
    ``eta``/``interpolation`` override the PTI config; η = 0 (the reconstruction) is allowed here.
    """
    schedule = _schedule_for(pipe, inv)
    device = pipe.unet.device
    if inv.method != "pti" and (eta is not None or interpolation is not None):
        raise UserError(f"eta and interpolation apply to --method pti, not {inv.method}")
    if eta is not None and not 0 <= eta <= 1:
        raise UserError(f"eta must be in [0, 1], got {eta}")
    c_star = _embed(pipe, target)  # c* = τ(P*)
    conds, unconds = _conditionings(pipe, inv, c_star)
    latent_eta, trajectory = None, None
    if inv.method == "pti":
        eta = inv.config.eta if eta is None else eta
        if (interpolation or inv.config.interpolation) == "latent":
            latent_eta, trajectory = eta, [z.to(device) for z in inv.latents]
        else:
            conds = interpolate_conditions(list(inv.conds), c_star, eta)
    z_T = inv.latents[-1].to(device)  # Alg. 1 line 14: z^edt_T ← z*_T
    return ddim_sample(pipe, z_T, schedule, [c.to(device) for c in conds], [u.to(device) for u in unconds],
                       inv.config.guidance, latent_eta=latent_eta, trajectory=trajectory)


def reconstruct(pipe, inv: Inversion) -> Image.Image:
    """The image as the inversion reproduces it (``reconstruct_latent`` decoded)."""
    return _decode(pipe, reconstruct_latent(pipe, inv))


def edit(pipe, inv: Inversion, target: str, eta: float | None = None, interpolation: str | None = None) -> Image.Image:
    """The edited image (``edit_latent`` decoded); call once per target to reuse one inversion."""
    return _decode(pipe, edit_latent(pipe, inv, target, eta=eta, interpolation=interpolation))


# ----------------------------------------------------------------------------------------------
# Command line


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "edit"


def _run_invert(args: argparse.Namespace) -> int:
    from .cli import torch_dtype
    from .editing import _load_images
    from .images import grid, save_image
    from .models import ModelNotAvailable, load_sd

    targets = args.target or []
    if args.load and args.save:
        raise UserError("--save and --load together would rewrite the loaded inversion; use one")
    if not args.load and not args.image:
        raise UserError("give an IMAGE to invert, or --load a saved inversion")
    if args.load:
        fixed = [o for o, v in (("--method", args.method), ("--prompt", args.prompt), ("--steps", args.steps),
                                ("--guidance", args.guidance), ("--iterations", args.iterations),
                                ("--beta", args.beta), ("--encode-ratio", args.encode_ratio)) if v is not None]
        if fixed:
            raise UserError(f"{', '.join(fixed)} cannot change a loaded inversion (only --target, --eta and "
                            "--interpolation apply); invert again instead")
        inv = Inversion.load(args.load)
        method = inv.method
        if args.eta is not None or args.interpolation is not None:  # re-validated by the config
            if method != "pti":
                raise UserError(f"--eta and --interpolation apply to --method pti, not {method}")
            inv.config = replace(inv.config, eta=inv.config.eta if args.eta is None else args.eta,
                                 interpolation=args.interpolation or inv.config.interpolation)
    else:
        method = args.method or "pti"
        step = "lr" if method == "nti" else "beta"  # --beta is PTI's β and NTI's Adam learning rate
        cfg = make_config(method, steps=args.steps, guidance=args.guidance, iterations=args.iterations,
                          encode_ratio=args.encode_ratio, eta=args.eta, interpolation=args.interpolation,
                          **{step: args.beta})
    images = _load_images([args.image]) if args.image else []
    try:
        pipe = load_sd(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    except ModelNotAvailable as err:
        raise ModelNotAvailable(f"invert --method {method}: {err}") from err
    if not args.load:
        prompt = args.prompt if args.prompt is not None else (targets[0] if method == "pti" and targets else "")
        inv = invert(pipe, images[0], method, prompt=prompt, config=cfg, progress=True)
        if args.save:
            inv.save(args.save)
            print(f"saved the inversion to {args.save}")
    out = Path(args.output)
    inputs = [args.image] if args.image else []
    row, labels = ([images[0]], ["input"]) if images else ([], [])
    recon = reconstruct(pipe, inv)
    save_image(recon, out / "reconstruction.png", inputs=inputs)
    row, labels = row + [recon], labels + ["reconstruction"]
    for k, target in enumerate(targets):
        result = edit(pipe, inv, target)
        name = "edit.png" if len(targets) == 1 else f"edit-{k + 1}-{_slug(target)}.png"
        save_image(result, out / name, inputs=inputs)
        row, labels = row + [result], labels + [target]
    size = recon.size
    save_image(grid([[im.resize(size) for im in row]], labels=labels), out / "grid.png", inputs=inputs)
    print(f"wrote reconstruction.png, {len(targets)} edit(s) and grid.png to {out}")
    return 0


def add_cli(sub) -> None:
    """Register ``pairedit invert``."""
    from .cli import add_model_args

    d, n, p_ = DDIMConfig(), NTIConfig(), PTIConfig()
    p = sub.add_parser(
        "invert", help="invert an image into the text-to-image model (DDIM, null-text, prompt tuning) and edit it",
        description="Invert IMAGE into the text-to-image model and write OUTDIR/reconstruction.png; with --target, "
                    "also the edit towards that caption (OUTDIR/edit.png, or edit-K-<caption>.png for several) and "
                    "OUTDIR/grid.png. Methods: ddim = DDIM inversion + DDIM-Edit; nti = null-text inversion "
                    "(Mokady et al. 2023); pti = Prompt Tuning Inversion (Dong et al. 2023).")
    p.add_argument("image", nargs="?", metavar="IMAGE", help="the image to invert (optional with --load)")
    p.add_argument("--method", default=None, help="ddim, nti or pti (default: pti)")
    p.add_argument("--prompt", default=None,
                   help="source caption describing IMAGE: the conditioning of ddim/nti and the starting embedding "
                        "of pti (default: empty; pti starts from the first --target, as in PTI Algorithm 1)")
    p.add_argument("--target", action="append", metavar="CAPTION",
                   help="caption of the wanted result; repeat for several edits from one inversion")
    p.add_argument("--eta", type=float, default=None,
                   help=f"pti: interpolation η in (0, 1] between the tuned and the target embedding; 1 = DDIM-Edit, "
                        f"towards 0 = the reconstruction (default: {p_.eta})")
    p.add_argument("--interpolation", default=None,
                   help="pti: 'condition' (Eq. 9, interpolate embeddings) or 'latent' (Eq. 10, interpolate latents) "
                        f"(default: {p_.interpolation})")
    p.add_argument("--steps", type=int, default=None, help=f"DDIM steps of the full schedule (default: {d.steps})")
    p.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance ω of reconstruction and editing (default: {d.guidance})")
    p.add_argument("--iterations", type=int, default=None,
                   help=f"optimisation iterations per timestep: nti N (default: {n.iterations}), "
                        f"pti N (default: {p_.iterations})")
    p.add_argument("--beta", type=float, default=None,
                   help=f"optimisation step: pti β (default: {p_.beta}), nti Adam learning rate (default: {n.lr})")
    p.add_argument("--encode-ratio", type=float, default=None,
                   help=f"fraction of the DDIM steps inverted and re-sampled, in (0, 1] (default: ddim "
                        f"{d.encode_ratio}, nti {n.encode_ratio}, pti {p_.encode_ratio})")
    p.add_argument("--save", metavar="FILE", help="save the inversion (safetensors + JSON metadata) for reuse")
    p.add_argument("--load", metavar="FILE", help="reuse a saved inversion instead of inverting IMAGE")
    p.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="folder for the results")
    add_model_args(p, clip=False)
    p.set_defaults(func=_run_invert)
