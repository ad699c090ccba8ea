"""The learned-instruction file: one ``.safetensors`` file per learned edit.

Layout (tensors, all float32 / int64, loadable with ``safetensors.torch.load_file``):

- ``cond``            (1, L, D)  the full learned conditioning c_T (text-encoder hidden states with
                                 the learned ``<ins>`` span in place), ready for the UNet;
- ``span``            (2,)       [start, end): the ``<ins>`` positions that were learned (VISII App. C);
- ``noise_timesteps`` (K,)       the training timesteps at which noise was recorded;
- ``noise_table``     (K, C, h, w) the noise recorded at each of them (VISII §5 "Noises").

The header's metadata holds ``format`` = ``pairedit-visii-instruction`` and ``pairedit`` = a JSON
object: ``model_id``, ``clip_id``, ``fingerprint`` (``models.fingerprint(pipe.unet, pipe.text_encoder)``),
``init_text``, ``config`` (the ``VisiiConfig`` used), ``pair_hashes`` (sha256 of each training
pair's before and after file), ``pairedit_version``, ``resolution`` (shorter side the pairs were
fitted to), ``image_size`` ([width, height] of the learning images) and ``losses``.

Reading never unpickles anything (no ``torch.load``): a safetensors file holds only tensors and
strings. Writing is atomic (``images.atomic_write``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import __version__
from .errors import UserError
from .images import atomic_write
from .sampling import FixedNoise

FORMAT = "pairedit-visii-instruction"
CHECKPOINT_FORMAT = "pairedit-visii-checkpoint"
FORMAT_VERSION = "1"


class InstructionError(UserError, ValueError):
    """An instruction (or checkpoint) file that cannot be used; the message names the file."""


class ModelMismatch(UserError, ValueError):
    """A learned instruction applied to a model other than the one it was learned on."""


@dataclass
class LearnedInstruction:
    """A learned edit: the conditioning c_T, its ``<ins>`` span, the recorded noises, provenance."""

    cond: torch.Tensor  # (1, L, D)
    start: int
    end: int
    noise_timesteps: torch.Tensor  # (K,) int64
    noise_table: torch.Tensor  # (K, C, h, w)
    model_id: str
    fingerprint: str
    init_text: str
    clip_id: str = ""
    # the texts the init went through before learning, e.g. the bank's pick, then that pick after word swaps
    init_trace: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    pair_hashes: list[list[str]] = field(default_factory=list)
    resolution: int = 0
    image_size: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    pairedit_version: str = __version__

    @property
    def span(self) -> torch.Tensor:
        """The learned ``<ins>`` hidden states (1, end - start, D)."""
        return self.cond[:, self.start:self.end]

    def fixed_noise(self) -> FixedNoise:
        """The recorded training noises as a noise source for ``sampling.ip2p_sample``."""
        return FixedNoise(self.noise_timesteps, self.noise_table)

    def metadata(self) -> dict:
        """Everything but the tensors, as stored in the file header."""
        meta = asdict(self)
        for k in ("cond", "start", "end", "noise_timesteps", "noise_table"):
            meta.pop(k)
        return meta


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes (provenance of the training pairs)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Atomically write contiguous CPU copies of ``tensors`` with string ``metadata``."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_safetensors(path: str | os.PathLike, kind: str = "instruction file") -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, header metadata) of a safetensors file; any problem → InstructionError naming the file."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise InstructionError(f"{path}: no such file")
    if path.is_dir():
        raise InstructionError(f"{path}: is a directory, not a {kind}")
    if path.stat().st_size == 0:
        raise InstructionError(f"{path}: empty file, not a {kind}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error type, OSError, or ValueError
        raise InstructionError(f"{path}: not a readable {kind} (truncated or not safetensors: "
                               f"{str(err).splitlines()[0] if str(err) else type(err).__name__})") from err
    return tensors, metadata


def save_instruction(instruction: LearnedInstruction, path: str | os.PathLike) -> Path:
    """Write ``instruction`` to ``path`` (a .safetensors file), atomically."""
    tensors = {
        "cond": instruction.cond.float(),
        "span": torch.tensor([instruction.start, instruction.end], dtype=torch.int64),
        "noise_timesteps": instruction.noise_timesteps.to(torch.int64),
        "noise_table": instruction.noise_table.float(),
    }
    metadata = {"format": FORMAT, "format_version": FORMAT_VERSION, "pairedit": json.dumps(instruction.metadata())}
    return write_safetensors(path, tensors, metadata)


def load_instruction(path: str | os.PathLike) -> LearnedInstruction:
    """Read a learned instruction written by ``save_instruction``; bad files → InstructionError."""
    tensors, metadata = read_safetensors(path)
    if metadata.get("format") != FORMAT:
        found = metadata.get("format") or "no pairedit header"
        raise InstructionError(f"{path}: not a pairedit learned instruction ({found}); make one with `pairedit learn`")
    missing = [k for k in ("cond", "span", "noise_timesteps", "noise_table") if k not in tensors]
    if missing:
        raise InstructionError(f"{path}: damaged instruction file, missing {', '.join(missing)}")
    try:
        meta = json.loads(metadata["pairedit"])
        start, end = (int(v) for v in tensors["span"].tolist())
        inst = LearnedInstruction(cond=tensors["cond"], start=start, end=end,
                                  noise_timesteps=tensors["noise_timesteps"], noise_table=tensors["noise_table"], **meta)
    except (KeyError, TypeError, ValueError) as err:
        raise InstructionError(f"{path}: damaged instruction metadata ({err})") from err
    if not (inst.cond.ndim == 3 and 0 < start < end <= inst.cond.shape[1]):
        raise InstructionError(f"{path}: damaged instruction (span [{start}, {end}) for conditioning "
                               f"{tuple(inst.cond.shape)})")
    return inst


def check_model(instruction: LearnedInstruction, pipe, model_id: str | None = None,
                name: str | os.PathLike = "the instruction") -> None:
    """Refuse to apply an instruction to a model other than the one it was learned on."""
    from .models import fingerprint

    fp = fingerprint(pipe.unet, pipe.text_encoder)
    if fp != instruction.fingerprint:
        here = model_id or getattr(pipe, "name_or_path", None) or "this model"
        raise ModelMismatch(f"{name} was learned on model {instruction.model_id!r} (fingerprint "
                            f"{instruction.fingerprint}) but is applied to {here!r} (fingerprint {fp}); "
                            "apply it with the model it was learned on, or learn it again")
