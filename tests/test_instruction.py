"""The learned-instruction file: round trip, bad files, model mismatch, no pickle."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pairedit import visii
from pairedit.errors import UserError
from pairedit.instruction import (
    InstructionError,
    LearnedInstruction,
    ModelMismatch,
    check_model,
    load_instruction,
    save_instruction,
    sha256_file,
)
from pairedit.models import fingerprint


def _instruction(fp: str = "0123456789abcdef", model_id: str = "tiny-ip2p") -> LearnedInstruction:
    g = torch.Generator().manual_seed(0)
    return LearnedInstruction(
        cond=torch.randn(1, 48, 32, generator=g), start=1, end=7,
        noise_timesteps=torch.tensor([3, 250, 999]), noise_table=torch.randn(3, 4, 16, 16, generator=g),
        model_id=model_id, fingerprint=fp, init_text="make it a watercolor painting", clip_id="tiny-clip",
        init_trace=["make it a watercolour painting", "make it a watercolor painting"],
        config=dataclasses.asdict(visii.VisiiConfig(steps=3)), pair_hashes=[["ab" * 32, "cd" * 32]],
        resolution=32, image_size=[32, 32], losses=[1.5, 1.25, 1.0])


def test_round_trip(tmp_path):
    inst = _instruction()
    path = save_instruction(inst, tmp_path / "edit.safetensors")
    back = load_instruction(path)
    for f in dataclasses.fields(LearnedInstruction):
        a, b = getattr(inst, f.name), getattr(back, f.name)
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype and torch.equal(a, b), f.name
        else:
            assert a == b, f.name
    assert torch.equal(back.span, inst.cond[:, 1:7])
    fixed = back.fixed_noise()
    assert torch.equal(fixed(0, torch.tensor(990)), inst.noise_table[2:3])


def test_write_is_atomic_and_leaves_no_temporary(tmp_path):
    save_instruction(_instruction(), tmp_path / "edit.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["edit.safetensors"]


def test_load_never_unpickles(tmp_path, monkeypatch):
    path = save_instruction(_instruction(), tmp_path / "edit.safetensors")

    def forbidden(*a, **k):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    load_instruction(path)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_bad_files_name_the_file(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InstructionError, match="bad.safetensors"):
        load_instruction(path)


def test_truncated_file(tmp_path):
    path = save_instruction(_instruction(), tmp_path / "edit.safetensors")
    data = path.read_bytes()
    for cut in (4, 20, len(data) // 2, len(data) - 1):
        short = tmp_path / f"short{cut}.safetensors"
        short.write_bytes(data[:cut])
        with pytest.raises(InstructionError, match=short.name):
            load_instruction(short)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InstructionError, match="no such file"):
        load_instruction(tmp_path / "nope.safetensors")
    with pytest.raises(InstructionError, match="directory"):
        load_instruction(tmp_path)


def test_other_safetensors_is_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "weights.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(InstructionError, match="weights.safetensors.*not a pairedit learned instruction"):
        load_instruction(path)


def test_fingerprint_mismatch_names_both(tiny):
    inst = _instruction(fp="deadbeefdeadbeef", model_id="some/other-model")
    here = fingerprint(tiny.ip2p.unet, tiny.ip2p.text_encoder)
    with pytest.raises(ModelMismatch) as err:
        check_model(inst, tiny.ip2p, "tiny-here", name="edit.safetensors")
    msg = str(err.value)
    assert all(s in msg for s in ("some/other-model", "deadbeefdeadbeef", "tiny-here", here, "edit.safetensors"))
    assert "\n" not in msg and isinstance(err.value, UserError)
    with pytest.raises(ModelMismatch):
        visii.apply(tiny.ip2p, inst, [], model_id="tiny-here")


def test_sha256_file(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
