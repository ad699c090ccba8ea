"""Trainers: each runs a few steps on tiny data; the loop resumes exactly after an interrupt."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPModel, CLIPTextModel

from conftest import requires_bundled
from pairedit import models, world
from pairedit.errors import UserError
from pairedit.training import common
from pairedit.training.data import edit_from_record, edit_record
from pairedit.training.trainers import (
    ClipTrainConfig,
    IP2PTrainConfig,
    T2ITrainConfig,
    VaeTrainConfig,
    deepen_ip2p,
    export_bundle,
    export_clip,
    export_unet,
    export_vae,
    snapshot_unet,
    train_clip,
    train_ip2p,
    train_t2i,
    train_vae,
    train_vae_decoder,
)


def _train_linear(cfg: common.LoopConfig, init_seed: int, interrupt_at: int | None = None) -> torch.nn.Module:
    torch.manual_seed(init_seed)
    model = torch.nn.Linear(4, 1)

    def loss_fn(step, gen):
        if step == interrupt_at:
            raise KeyboardInterrupt
        x = torch.randn(8, 4, generator=gen)
        return ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()

    return common.train_loop(cfg, model, loss_fn, "linear")


def test_loop_resumes_exactly_after_interrupt(tmp_path):
    cfg = common.LoopConfig(out=str(tmp_path / "a"), steps=6, batch_size=8, lr=1e-2, warmup=2, ckpt_every=4)
    straight = _train_linear(cfg, init_seed=0)

    cfg_b = common.LoopConfig(**{**cfg.__dict__, "out": str(tmp_path / "b")})
    with pytest.raises(KeyboardInterrupt):
        _train_linear(cfg_b, init_seed=0, interrupt_at=3)
    ckpt = common.latest_checkpoint(Path(cfg_b.out) / "checkpoints")
    assert ckpt.name == "step_0000003"  # the interrupt saved the three finished steps
    resumed = _train_linear(cfg_b, init_seed=123)  # a fresh model: everything must come from the checkpoint
    for a, b in zip(straight.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b)


class _LinearWithConfigFolder(torch.nn.Linear):
    """Saves a config folder into each checkpoint, as UNetAndTextEncoder does (text_encoder/config.json)."""

    def save_config(self, folder: Path) -> None:
        (Path(folder) / "sub").mkdir()
        (Path(folder) / "sub" / "config.json").write_text("{}")


def test_old_checkpoints_with_config_folders_are_pruned(tmp_path):
    # session 22: pruning the third-last checkpoint of a --train-text-encoder run crashed on its text_encoder/ folder
    cfg = common.LoopConfig(out=str(tmp_path), steps=4, batch_size=8, lr=1e-2, warmup=1, ckpt_every=1)
    model = _LinearWithConfigFolder(4, 1)
    common.train_loop(cfg, model, lambda step, gen: model(torch.randn(8, 4, generator=gen)).pow(2).mean(), "linear")
    kept = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert kept == ["step_0000003", "step_0000004"]
    assert (tmp_path / "checkpoints" / "step_0000004" / "sub" / "config.json").exists()


def test_nan_loss_stops_with_a_message(tmp_path):
    cfg = common.LoopConfig(out=str(tmp_path / "a"), steps=4, batch_size=8, lr=1e-2, warmup=1, ckpt_every=100)
    model = torch.nn.Linear(4, 1)

    def loss_fn(step, gen):
        return model(torch.randn(8, 4, generator=gen)).mean() * (float("nan") if step == 2 else 1.0)

    with pytest.raises(FloatingPointError, match="loss is nan at step 2"):
        common.train_loop(cfg, model, loss_fn, "linear")


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch, capsys):
    assert common.cpu_has_native_bf16("flags : fpu avx2 avx512f avx512_bf16 amx_tile")
    assert not common.cpu_has_native_bf16("flags : fpu sse2 fma avx avx2")
    from accelerate.state import AcceleratorState

    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: False)
    cfg = common.LoopConfig(out=str(tmp_path / "a"), steps=1, batch_size=8, lr=1e-2, warmup=1, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=True)  # Accelerate keeps one precision per process
    try:
        _train_linear(cfg, init_seed=0)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    assert "no native bf16" in capsys.readouterr().out
    cfg = common.LoopConfig(out=str(tmp_path / "b"), steps=1, batch_size=8, lr=1e-2, warmup=1)
    _train_linear(cfg, init_seed=0)
    assert "no native bf16" not in capsys.readouterr().out


def test_resume_uses_this_runs_peak_lr(tmp_path):
    cfg = common.LoopConfig(out=str(tmp_path / "a"), steps=4, batch_size=8, lr=1e-2, warmup=1, ckpt_every=4)
    _train_linear(cfg, init_seed=0)
    longer = common.LoopConfig(**{**cfg.__dict__, "steps": 6, "lr": 3e-2, "log_every": 1})
    _train_linear(longer, init_seed=0)
    logged = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    # the lr logged after step 5 is the new peak on the new cosine schedule, not the checkpoint's old peak
    assert logged[-2]["lr"] == pytest.approx(3e-2 * common.lr_lambda(longer)(5))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    models.build_tokenizer(world.corpus()[:300], run / "tokenizer", vocab_size=600)
    return run


def test_each_trainer_runs_and_export_loads(tiny_run, monkeypatch):
    run = tiny_run
    attention_set = []  # the diffusion trainers pick the attention to back-propagate through
    real_training_attention = models.training_attention

    def spy(unet, mixed_precision):
        attention_set.append(unet)
        return real_training_attention(unet, mixed_precision)

    monkeypatch.setattr(models, "training_attention", spy)
    few = dict(steps=2, warmup=1, log_every=1, ckpt_every=2)
    train_clip(run, ClipTrainConfig(out=str(run / "clip"), batch_size=4, lr=1e-3, n_scenes=16, width=32, layers=1,
                                    shape_negatives=2, **few))
    train_vae(run, VaeTrainConfig(out=str(run / "vae"), batch_size=2, lr=1e-3, n_scenes=16, channels=(8, 8, 8), **few))
    vae_before = AutoencoderKL.from_pretrained(run / "vae" / "final")
    train_vae_decoder(run, VaeTrainConfig(out=str(run / "vae_decoder"), batch_size=2, lr=1e-2, n_scenes=16, **few))
    vae_after = AutoencoderKL.from_pretrained(run / "vae_decoder" / "final")
    # decoder fine-tuning leaves the encoder, hence every latent, unchanged
    for (name, a), b in zip(vae_before.state_dict().items(), vae_after.state_dict().values()):
        assert torch.equal(a, b) == (not name.startswith(("decoder.", "post_quant_conv."))), name
    train_t2i(run, T2ITrainConfig(out=str(run / "t2i"), batch_size=2, lr=1e-3, n_scenes=16, channels=(16, 16, 16), **few))
    train_ip2p(run, IP2PTrainConfig(out=str(run / "ip2p"), batch_size=2, lr=1e-3, n_pairs=8, **few))
    assert len(attention_set) == 2  # t2i and ip2p
    for stage in ("clip", "vae", "t2i", "ip2p"):
        assert (run / stage / "final").exists()
        assert (run / stage / "log.jsonl").read_text().strip()
    bundle = run / "bundle"
    export_bundle(run, bundle)
    ip2p = models.load_ip2p(str(bundle / "ip2p"))
    assert ip2p.unet.config.in_channels == 8
    # InstructPix2Pix §3.2: the image-condition channels of conv_in start at zero
    assert models.load_sd(str(bundle / "sd")).unet.config.in_channels == 4
    clip, processor = models.load_clip(str(bundle / "clip"))
    assert clip.config.projection_dim == 32
    assert ip2p.vae.config.scaling_factor != 0.18215  # computed from this VAE's latents, as SD's was
    assert models.trained_steps(str(bundle / "ip2p"), "ip2p") == 2  # recorded for the reports
    assert models.describe(str(bundle / "sd"), "sd").endswith("(UNet trained 2 steps)")
    # A new run continues InstructPix2Pix training from the exported (fp16) bundle.
    again = run / "again"
    train_ip2p(again, IP2PTrainConfig(out=str(again / "ip2p"), batch_size=2, lr=1e-3, n_pairs=8,
                                      base=str(bundle / "ip2p"), **few))
    assert (again / "ip2p" / "final" / "config.json").exists()
    # its length adds to the bundle's: 2 steps there, 2 here
    assert json.loads((again / "ip2p" / "final" / "trained.json").read_text())["step"] == 4
    # A deepened copy (two layers per UNet block, same function) trains on in its own run.
    deep = deepen_ip2p(run, run / "deep")
    assert models.load_ip2p(str(deep)).unet.config.layers_per_block == 2
    train_ip2p(run / "deeprun", IP2PTrainConfig(out=str(run / "deeprun" / "ip2p"), batch_size=2, lr=1e-3, n_pairs=8,
                                                 base=str(deep), **few))
    assert UNet2DConditionModel.load_config(run / "deeprun" / "ip2p" / "final")["layers_per_block"] == 2
    # A snapshot rebuilds the final model from the last checkpoint's EMA weights (here: the same step).
    final = UNet2DConditionModel.from_pretrained(again / "ip2p" / "final")
    (again / "ip2p" / "final" / "config.json").unlink()  # the snapshot must not need the old final folder
    snapshot_unet(again, "ip2p")
    snap = UNet2DConditionModel.from_pretrained(again / "ip2p" / "final")
    assert json.loads((again / "ip2p" / "final" / "trained.json").read_text())["steps_this_run"] == 2
    # ... and goes back into the bundle as its UNet alone
    export_unet(again, "ip2p", bundle)
    assert models.trained_steps(str(bundle / "ip2p"), "ip2p") == 4
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(bundle / "ip2p" / "unet" / "diffusion_pytorch_model.safetensors").values()} == {
        torch.float16}
    for a, b in zip(final.state_dict().values(), snap.state_dict().values()):
        assert torch.equal(a, b)
    # With train_text_encoder the text encoder learns too, and is saved, snapshotted and exported with the UNet.
    joint = run / "joint"
    train_ip2p(joint, IP2PTrainConfig(out=str(joint / "ip2p"), batch_size=2, lr=1e-2, n_pairs=8,
                                      base=str(bundle / "ip2p"), train_text_encoder=True, edit_region_weight=4.0,
                                      object_weight=2.0, twin_pairs=2, absent_pairs=2, **few))
    base_te, te = (CLIPTextModel.from_pretrained(f) for f in (bundle / "ip2p" / "text_encoder",
                                                               joint / "ip2p" / "final" / "text_encoder"))
    assert not torch.equal(te.final_layer_norm.weight, base_te.final_layer_norm.weight.float())
    # the frozen default left the bundle's text encoder (CLIP's text tower) as it was
    assert torch.equal(base_te.final_layer_norm.weight,
                       CLIPModel.from_pretrained(bundle / "clip").text_model.final_layer_norm.weight)
    snapshot_unet(joint, "ip2p")
    snap_te = CLIPTextModel.from_pretrained(joint / "ip2p" / "final" / "text_encoder")
    assert all(torch.equal(a, b) for a, b in zip(te.state_dict().values(), snap_te.state_dict().values()))
    export_unet(joint, "ip2p", bundle)
    exported = models.load_ip2p(str(bundle / "ip2p")).text_encoder
    assert torch.allclose(exported.final_layer_norm.weight.float(), te.final_layer_norm.weight,
                          atol=1e-2)
    # CLIP refits its image side to that encoder, which becomes its text tower again (and stays frozen).
    refit = run / "refit"
    train_clip(refit, ClipTrainConfig(out=str(refit / "clip"), batch_size=4, lr=1e-2, n_scenes=16, base=str(bundle / "clip"),
                                      text_tower=str(joint / "ip2p" / "final" / "text_encoder"), **few))
    old_clip, new_clip = (CLIPModel.from_pretrained(f) for f in (bundle / "clip", refit / "clip" / "final"))
    assert all(torch.equal(a, b) for a, b in zip(new_clip.text_model.state_dict().values(), te.state_dict().values()))
    assert not torch.equal(new_clip.visual_projection.weight, old_clip.visual_projection.weight.float())
    export_clip(refit, bundle)  # ... and goes into the bundle, its tower into both pipelines
    for folder in ("sd", "ip2p"):
        exported = CLIPTextModel.from_pretrained(bundle / folder / "text_encoder")
        assert torch.allclose(exported.final_layer_norm.weight.float(), te.final_layer_norm.weight, atol=1e-2)
    with pytest.raises(UserError, match="--base"):
        train_clip(refit, ClipTrainConfig(out=str(refit / "clip2"), batch_size=4, lr=1e-2, text_tower=str(bundle), **few))
    # The bundle's VAE decoder fine-tunes on (from posterior means) in a run of its own and goes back into both
    # pipelines with the encoder, hence the latents the UNets were trained on, unchanged.
    dec = run / "decoder"
    train_vae_decoder(dec, VaeTrainConfig(out=str(dec / "vae_decoder"), batch_size=2, lr=1e-2, n_scenes=16,
                                          base=str(bundle / "ip2p"), decode_from="mode", **few))
    old_vae = AutoencoderKL.from_pretrained(bundle / "sd" / "vae")
    assert export_vae(dec, bundle) == [bundle / "sd" / "vae", bundle / "ip2p" / "vae"]
    for folder in ("sd", "ip2p"):
        new_vae = AutoencoderKL.from_pretrained(bundle / folder / "vae")
        for (name, a), b in zip(old_vae.state_dict().items(), new_vae.state_dict().values()):
            assert torch.equal(a, b) == (not name.startswith(("decoder.", "post_quant_conv."))), name
    other = run / "other"  # a VAE trained from another start has other latents
    AutoencoderKL(**models.vae_config((8, 8, 8))).save_pretrained(other / "vae_decoder" / "final")
    with pytest.raises(UserError, match="encoder differs"):
        export_vae(other, bundle)
    with pytest.raises(UserError, match="decode_from"):
        train_vae_decoder(dec, VaeTrainConfig(out=str(dec / "x"), batch_size=2, lr=1e-2, decode_from="mean", **few))


def test_a_larger_pair_pool_adds_files_and_keeps_the_pairs_already_drawn(tmp_path, monkeypatch):
    from pairedit.training import trainers

    monkeypatch.setattr(trainers, "PAIRS_PER_FILE", 3)
    vae = AutoencoderKL(**models.vae_config((8, 8, 8))).eval()
    with torch.no_grad():
        edits3, lat3 = trainers.training_pairs(tmp_path, 3, 0, vae)
        edits7, lat7 = trainers.training_pairs(tmp_path, 7, 0, vae)
    assert sorted(p.name for p in (tmp_path / "data").glob("pairs*.npz")) == ["pairs.npz", "pairs_1.npz", "pairs_2.npz"]
    assert len(edits7) == 7 and lat7["before"].shape[0] == lat7["after"].shape[0] == 7
    assert edits7[:3] == edits3 and torch.equal(lat7["after"][:3], lat3["after"])
    assert edits7[3:6] != edits7[:3]  # each file has its own random stream


def test_binding_and_compound_pairs_come_after_the_pool_from_their_own_streams(tmp_path, monkeypatch):
    from pairedit.training import trainers

    monkeypatch.setattr(trainers, "PAIRS_PER_FILE", 3)
    vae = AutoencoderKL(**models.vae_config((8, 8, 8))).eval()
    with torch.no_grad():
        edits3, lat3 = trainers.training_pairs(tmp_path, 3, 0, vae)
        edits7, lat7 = trainers.training_pairs(tmp_path, 3, 0, vae, binding=4)
    assert sorted(p.name for p in (tmp_path / "data").glob("binding*.npz")) == ["binding_pairs.npz", "binding_pairs_1.npz"]
    assert len(edits7) == 7 and lat7["before"].shape[0] == 7
    assert edits7[:3] == edits3 and torch.equal(lat7["after"][:3], lat3["after"])  # the pool is unchanged
    assert all(e.category in world.TARGETED_CATEGORIES for e in edits7[3:])
    with torch.no_grad():
        edits, lat = trainers.training_pairs(tmp_path, 3, 0, vae, binding=2, compound=2)
    assert len(edits) == 7 and lat["after"].shape[0] == 7  # the first binding file holds 3: its first 2 are taken
    assert edits[3:5] == edits7[3:5] and torch.equal(lat["after"][3:5], lat7["after"][3:5])
    assert all(isinstance(e, world.CompoundEdit) for e in edits[5:])
    stored = trainers.pairs_dataset(tmp_path / "data" / "compound_pairs.npz", 2, 0, pixels=False)["edits"]
    assert stored == edits[5:] == [edit_from_record(edit_record(e)) for e in stored]
    with pytest.raises(UserError, match="holds 2 pairs, fewer than the 3"):
        trainers.pairs_dataset(tmp_path / "data" / "compound_pairs.npz", 3, 0)


def test_twin_pairs_come_two_by_two_from_their_own_stream(tmp_path, monkeypatch):
    from pairedit.training import data, trainers

    monkeypatch.setattr(trainers, "PAIRS_PER_FILE", 5)  # odd: a file's last twin loses its partner
    vae = AutoencoderKL(**models.vae_config((8, 8, 8))).eval()
    with torch.no_grad():
        edits, lat = trainers.training_pairs(tmp_path, 2, 0, vae, twins=8, cells=("objects",))
    twins = edits[2:]
    assert len(twins) == 8 and lat["before"].shape[0] == lat["objects"].shape[0] == 10
    stream = data._pair_stream("twins", 0, 0)
    assert twins[:5] == [next(stream).edit for _ in range(5)]  # twin after twin, in the file's order
    before = trainers.pairs_dataset(tmp_path / "data" / "twin_pairs.npz", 5, 0, kind="twins")["before"]
    for i in (0, 2):  # each twin: one edit type, two objects of one before-image
        assert twins[i].type == twins[i + 1].type and twins[i].target != twins[i + 1].target
        assert np.array_equal(before[i], before[i + 1])
    # the file's second part starts a stream of its own
    stream = data._pair_stream("twins", 0, 1)
    assert twins[5:8] == [next(stream).edit for _ in range(3)]


def test_changed_cells_mark_the_latent_cells_an_edit_touches(tmp_path, monkeypatch):
    from pairedit.training import trainers

    before = np.zeros((2, 64, 64, 3), np.uint8)
    after = before.copy()
    after[0, 10:14, 40:41, 1] = 200  # pixels in latent cells (2..3, 10) of a 16×16 latent
    after[1, :, :, 0] = 5  # below the threshold: noise, not an edit
    cells = trainers.changed_cells(before, after, 16)
    assert cells.shape == (2, 1, 16, 16) and cells.dtype == torch.bool
    assert cells[0, 0].nonzero().tolist() == [[2, 10], [3, 10]] and not cells[1].any()
    # The trainer's cached cells match the pairs' pixels, pair by pair, across files and kinds.
    monkeypatch.setattr(trainers, "PAIRS_PER_FILE", 3)
    vae = AutoencoderKL(**models.vae_config((8, 8, 8))).eval()
    with torch.no_grad():
        edits, lat = trainers.training_pairs(tmp_path, 4, 0, vae, binding=2, cells=("changed", "objects"))
    assert lat["changed"].shape == lat["objects"].shape == (6, 1, 16, 16)
    assert (tmp_path / "data" / "pair_changed_1.safetensors").exists()
    pixels = trainers.pairs_dataset(tmp_path / "data" / "binding_pairs.npz", 2, 0, kind="binding")
    assert torch.equal(lat["changed"][4:], trainers.changed_cells(pixels["before"], pixels["after"], 16))
    share = lat["changed"][4:].float().mean().item()
    assert 0 < share < 0.5  # an edit that names one object changes a small part of the image
    # Object cells are drawn again from each file's random stream: every object of both scenes, which holds
    # what an object edit changes and the objects it must leave alone.
    rng = random.Random("binding:0")
    for i in (4, 5):
        pair = world.binding_pair(rng, "train")
        assert pair.edit == edits[i]
        per_object = trainers.pixels_to_cells(world.object_masks(pair.before), 16)
        assert all(lat["objects"][i][cells].all() for cells in per_object)  # each object, the unchanged ones too
        assert lat["objects"][i].sum() < 256 and not (lat["changed"][i] & ~lat["objects"][i]).any()  # edges included


def test_edit_region_weight_shifts_each_pairs_loss_to_the_changed_cells(tiny):
    from diffusers import DDPMScheduler

    from pairedit.training.trainers import denoising_errors

    unet, sched = tiny.sd.unet, DDPMScheduler.from_config(models.noise_schedule_config())
    gen = torch.Generator().manual_seed(0)
    z0, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    text, t = torch.randn(3, 5, unet.config.cross_attention_dim, generator=gen), torch.tensor([10, 500, 900])
    changed = torch.zeros(3, 1, 8, 8)
    changed[:, :, 2:4, 2:4] = 1
    changed[2] = 1  # a scene-wide edit changes every cell: weighting it changes nothing

    def errors(weight=None):
        with torch.no_grad():
            return denoising_errors(unet, sched, z0, text, noise, t, cell_weight=weight)

    with torch.no_grad():
        err = (unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=text).sample - noise) ** 2
    inside = (err * changed).sum(dim=(1, 2, 3)) / (4 * changed.sum(dim=(1, 2, 3)))
    outside = (err * (1 - changed)).sum(dim=(1, 2, 3)) / (4 * (1 - changed).sum(dim=(1, 2, 3))).clamp(min=1)
    torch.testing.assert_close(errors(), err.mean(dim=(1, 2, 3)))
    torch.testing.assert_close(errors(torch.ones(3, 1, 8, 8)), errors())  # uniform weights: the plain loss
    weighted = errors(1 + 4 * changed)
    share = 5 * 4 / (5 * 4 + 60)  # 4 changed cells of 64 at weight 5, normalised per pair
    torch.testing.assert_close(weighted[:2], share * inside[:2] + (1 - share) * outside[:2])
    torch.testing.assert_close(weighted[2], errors()[2])


def test_widen_conv_in_zero_initialises_new_channels(tiny):
    wide = models.widen_conv_in(tiny.sd.unet, 8)
    w = wide.conv_in.weight
    assert w.shape[1] == 8 and torch.all(w[:, 4:] == 0)
    torch.testing.assert_close(w[:, :4], tiny.sd.unet.conv_in.weight)


def test_deepen_unet_keeps_the_function_and_trains_the_new_layers():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**models.unet_config(channels=(16, 32, 32), cross_attention_dim=32, sample_size=8))
    unet = models.widen_conv_in(unet, 8)  # the InstructPix2Pix layout; channel counts differ between blocks
    for p in unet.parameters():  # no zero-initialised output layers left: every path carries signal
        torch.nn.init.normal_(p, std=0.05)
    deep = models.deepen_unet(unet)
    assert deep.config.layers_per_block == 2 and deep.config.in_channels == 8
    assert sum(p.numel() for p in deep.parameters()) > 1.3 * sum(p.numel() for p in unet.parameters())
    z, t = torch.randn(2, 8, 8, 8), torch.tensor([10, 900])
    text = torch.randn(2, 5, 32)
    with torch.no_grad():
        torch.testing.assert_close(deep(z, t, text).sample, unet(z, t, text).sample, atol=1e-5, rtol=1e-4)
    deep(z, t, text).sample.square().mean().backward()  # the identity layers are not stuck at zero
    for name in ("down_blocks.0.resnets.1.conv2.weight", "up_blocks.1.attentions.1.proj_out.weight",
                 "up_blocks.2.resnets.1.conv2.weight"):
        assert deep.get_parameter(name).grad.abs().sum() > 0, name
    with pytest.raises(UserError, match="from 1 layer per block to 2; this one has 2"):
        models.deepen_unet(deep)


def test_bf16_cpu_training_attention_is_the_same_function_and_gradient():
    import copy

    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    torch.manual_seed(0)
    unet = UNet2DConditionModel(**models.unet_config(channels=(16, 32, 32), cross_attention_dim=32, sample_size=8))
    for p in unet.parameters():  # no zero-initialised output layers: attention reaches the output
        torch.nn.init.normal_(p, std=0.05)
    fp32 = models.training_attention(copy.deepcopy(unet), "no")
    assert {type(p) for p in fp32.attn_processors.values()} == {AttnProcessor2_0}  # in fp32 SDPA is faster
    classic = models.training_attention(copy.deepcopy(unet), "bf16")
    assert {type(p) for p in classic.attn_processors.values()} == {AttnProcessor}
    z, t, text = torch.randn(2, 4, 8, 8), torch.tensor([10, 900]), torch.randn(2, 5, 32)
    query = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    outs = []
    for model in (unet, classic):
        out = model(z, t, text).sample
        out.square().mean().backward()
        outs.append((out.detach(), model.get_parameter(query).grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(outs[1][1], outs[0][1], atol=1e-6, rtol=1e-4)


def test_min_snr_weighting_down_weights_nearly_clean_timesteps(tiny):
    from diffusers import DDPMScheduler

    from pairedit.training.trainers import denoising_loss

    unet, sched = tiny.sd.unet, DDPMScheduler.from_config(models.noise_schedule_config())
    z0 = torch.randn(32, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    text = torch.randn(32, 5, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(2))

    def loss(gamma):
        with torch.no_grad():
            return denoising_loss(unet, sched, z0, text, torch.Generator().manual_seed(0), snr_gamma=gamma)

    gen = torch.Generator().manual_seed(0)  # the same draws as denoising_loss makes
    noise, t = torch.randn(z0.shape, generator=gen), torch.randint(0, 1000, (32,), generator=gen)
    with torch.no_grad():
        eps = unet(sched.add_noise(z0, noise, t), t, encoder_hidden_states=text).sample
    per_sample = ((eps - noise) ** 2).mean(dim=(1, 2, 3))
    ac = sched.alphas_cumprod[t]
    snr = ac / (1 - ac)  # signal-to-noise ratio of z_t
    weight = snr.clamp(max=5.0) / snr
    torch.testing.assert_close(loss(None), per_sample.mean())
    torch.testing.assert_close(loss(5.0), (per_sample * weight).mean())
    torch.testing.assert_close(loss(1e12), loss(None))  # γ above every SNR: unweighted
    assert torch.all(weight[t < 100] < 0.6) and torch.all(weight[t > 200] == 1)


def test_memoised_text_embeddings_equal_fresh_ones(tiny):
    from pairedit.training.trainers import FrozenTextEmbeddings, _embed

    te, tok = tiny.ip2p.text_encoder, tiny.ip2p.tokenizer
    embed = FrozenTextEmbeddings(te, tok, max_items=3)
    texts = ["make it red", "", "make it red", "add a star"]
    torch.testing.assert_close(embed(texts), _embed(te, tok, texts))
    assert len(embed.cache) == 3
    torch.testing.assert_close(embed(["turn it into a drawing"]), _embed(te, tok, ["turn it into a drawing"]))
    assert len(embed.cache) == 1  # over max_items: the memo starts again
    both = ["turn it into a drawing", "make it red", "add a star", "make it blue"]  # 1 memoised + 3 new > 3
    torch.testing.assert_close(embed(both), _embed(te, tok, both))  # the memoised one survives the restart
    assert set(embed.cache) == set(both)


@requires_bundled
def test_vae_ceiling_of_the_bundled_autoencoder():
    """The round trip is what a perfect latent edit outputs: near the image, and the ceiling the ip2p eval reports."""
    from pairedit import metrics
    from pairedit.images import to_pil, to_tensor
    from pairedit.training.evaluate import heldout_pairs, vae_roundtrip

    vae = AutoencoderKL.from_pretrained(models.BUNDLED_DIR / "ip2p" / "vae").float()
    pairs = heldout_pairs(8, types=("background_night", "style_sketch"))
    afters = [p.images()[1] for p in pairs]
    rec = to_pil(vae_roundtrip(vae, to_tensor(afters)))
    assert min(metrics.psnr(r, a) for r, a in zip(rec, afters)) > 22  # whole-image edits: far above the input
    assert all(metrics.edit_success(p.images()[0], r, a) for p, r, a in zip(pairs, rec, afters))


@requires_bundled
def test_ip2p_eval_reports_where_the_error_is():
    """eval_ip2p on a few pairs: every score per category, and the kept pixels come through the VAE nearly intact."""
    from pairedit.training.evaluate import eval_ip2p, heldout_pairs, same_edit_on_other_objects

    res = eval_ip2p(models.load_ip2p("bundled"), n=4, n_vague=2)
    assert res["n"] == 4 and sum(c["n"] for c in res["per_category"].values()) == 4
    targeted = [len(p.before.objects) for p in heldout_pairs(4) if p.edit.target is not None]
    assert {k: v["n"] for k, v in res["targeted_edits_by_objects_in_scene"].items()} == {
        str(k): targeted.count(k) for k in set(targeted)}
    assert sum(v["n"] for v in res["targeted_edits_by_object_size"].values()) == len(targeted)
    for key in ("edit_success", "psnr_kept", "psnr_changed", "vae_ceiling_edit_success", "vae_ceiling_psnr_kept"):
        assert np.isfinite(res[key]), key
    assert res["vae_ceiling_psnr_kept"] > 25 and res["vae_ceiling_psnr_kept"] > res["psnr_kept"]
    assert sum(res["vague_drawing_style_shares"].values()) == pytest.approx(1.0)
    assert set(res["vague_drawing_style_shares_blurred"]) == set(res["vague_drawing_style_shares"])
    chosen = res["targeted_edits_object_chosen"]
    assert chosen["n"] == sum(p.edit.target is not None and bool(same_edit_on_other_objects(p.before, p.edit))
                              for p in heldout_pairs(4))
    if chosen["n"]:
        assert sum(chosen["all"].values()) == pytest.approx(1.0)
    per_pair = res["per_pair_edit_success"]  # in pair order, for paired comparisons of two models
    assert len(per_pair) == 4 and set(per_pair) <= {"0", "1"}
    assert per_pair.count("1") / 4 == pytest.approx(res["edit_success"])


def test_object_chosen_tells_the_named_object_from_another_and_from_no_edit():
    """The binding diagnostic: exact after-images of the edit on the named and on another object."""
    from pairedit.training.evaluate import object_chosen, same_edit_on_other_objects

    scene = world.Scene("plain", (world.Obj("square", "red", "large", 0.3, 0.3),
                                  world.Obj("diamond", "blue", "large", 0.7, 0.7)), "photo")
    edit = world.Edit("remove", "square")
    wrong = same_edit_on_other_objects(scene, edit)
    assert [len(w.objects) == 1 and w.objects[0].shape == "square" for w in wrong] == [True]
    before, after = world.render(scene), world.render(world.apply_edit(scene, edit))
    wrong_images = [world.render(w) for w in wrong]
    assert object_chosen(after, before, after, wrong_images) == "named"
    assert object_chosen(wrong_images[0], before, after, wrong_images) == "other"
    assert object_chosen(before, before, after, wrong_images) == "none"
    # an edit that does not apply to the other object (it is already blue) has no wrong-object image
    assert same_edit_on_other_objects(scene, world.Edit("recolor_blue", "square")) == []


DATA_PARALLEL_SCRIPT = """
import sys, torch, torch.distributed as dist
from pairedit.training import common
cfg = common.LoopConfig(out=sys.argv[1], steps=5, batch_size=8, lr=1e-2, warmup=1, ckpt_every=100, threads=1)
torch.manual_seed(dist.get_rank() if dist.is_initialized() else 0)  # different starts: the loop must sync them
model = torch.nn.Linear(4, 1)
def loss_fn(step, gen):
    x = torch.randn(8, 4, generator=gen)  # each rank draws its own batch
    return ((model(x) - x.sum(dim=1, keepdim=True)) ** 2).mean()
m = common.train_loop(cfg, model, loss_fn, "linear")
w = torch.cat([p.detach().flatten() for p in m.parameters()])
# one write per line: the launcher runs both ranks unbuffered (-u) into one pipe, where print's separate
# write of the newline could interleave with the other rank's line
sys.stdout.write(f"WEIGHTS {dist.get_rank()} {dist.get_world_size()} {[round(v, 6) for v in w.tolist()]}\\n")
sys.stdout.write(f"WRITER {dist.get_rank()} {common.is_main_process()}\\n")
"""


def _launch_two_processes(tmp_path: Path, script: str, *args: str):
    import os
    import shutil
    import socket
    import subprocess

    launcher = shutil.which("accelerate")
    if launcher is None:
        pytest.skip("the accelerate launcher is not on PATH")
    path = tmp_path / "script.py"
    path.write_text(script)
    with socket.socket() as s:  # a free port: a training run launched by accelerate may hold the default 29500
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    return subprocess.Popen([launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                             "--main_process_port", port, "--mixed_precision", "no", "--dynamo_backend", "no",
                             str(path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, start_new_session=True)


def test_data_parallel_on_cpu_processes_keeps_one_model(tmp_path):
    """Under `accelerate launch --multi_gpu --num_processes 2` on CPU, the ranks average gradients (gloo)."""
    out, err = _launch_two_processes(tmp_path, DATA_PARALLEL_SCRIPT, str(tmp_path / "run")).communicate(timeout=300)
    lines = [line.split(" ", 3) for line in out.splitlines() if line.startswith("WEIGHTS")]
    assert len(lines) == 2, out + err[-3000:]
    assert {rank for _, rank, _, _ in lines} == {"0", "1"} and all(world == "2" for _, _, world, _ in lines)
    assert lines[0][3] == lines[1][3]  # one model: same start (broadcast) and same averaged steps
    writers = sorted(line.split()[1:] for line in out.splitlines() if line.startswith("WRITER"))
    assert writers == [["0", "True"], ["1", "False"]]  # only rank 0 writes the final model


KILL_SCRIPT = """
import sys, torch, torch.distributed as dist
from pathlib import Path
from pairedit import cli
from pairedit.training import common
out, stop_after = Path(sys.argv[1]), int(sys.argv[2])  # stop_after < 0: run until killed
cfg = common.LoopConfig(out=str(out), steps=100_000, batch_size=8, lr=1e-2, warmup=1, ckpt_every=7, threads=1)
torch.manual_seed(0)
model = torch.nn.Linear(2048, 2048)  # 4M weights: a checkpoint takes long enough to be hit by a second signal
def loss_fn(step, gen):
    if step == stop_after:
        raise KeyboardInterrupt  # the reference: both ranks stop before step `stop_after`
    if step == 30 and dist.get_rank() == 0:
        (out / "running").write_text("")
    x = torch.randn(8, 2048, generator=gen)
    return ((model(x) - x.flip(1)) ** 2).mean()
import signal
signal.signal(signal.SIGTERM, cli._terminate_as_interrupt)  # what `pairedit` installs
try:
    common.train_loop(cfg, model, loss_fn, "linear")
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_killing_a_data_parallel_run_saves_the_state_after_a_whole_step(tmp_path):
    """`pkill -f "train ip2p"` signals the launcher and both workers, and the launcher forwards its signal:
    each worker gets SIGTERM twice. The checkpoint must still be written, and be exactly the state after the
    step count it names (no half-applied update), as a run stopped cleanly at that step has it."""
    import os
    import signal
    import time

    from safetensors.torch import load_file

    killed = tmp_path / "killed"
    killed.mkdir()
    proc = _launch_two_processes(tmp_path, KILL_SCRIPT, str(killed), "-1")
    deadline = time.time() + 120
    while not (killed / "running").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
        time.sleep(0.2)
    for _ in range(10):  # the launcher and both workers, like pkill -f, and again (a second pkill or Ctrl-C)
        os.killpg(proc.pid, signal.SIGTERM)
        time.sleep(0.03)
    out, err = proc.communicate(timeout=120)
    ckpt = common.latest_checkpoint(killed / "checkpoints")
    assert ckpt is not None and "interrupted: checkpoint saved at step" in out, out + err[-3000:]
    step = json.loads((ckpt / "state.json").read_text())["step"]
    assert step >= 30, step

    reference = tmp_path / "reference"
    reference.mkdir()
    proc = _launch_two_processes(tmp_path, KILL_SCRIPT, str(reference), str(step))
    out, err = proc.communicate(timeout=300)
    ref = common.latest_checkpoint(reference / "checkpoints")
    assert ref is not None and ref.name == ckpt.name, out + err[-3000:]
    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(ckpt / name), load_file(ref / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)


def test_deepen_cli_errors_are_one_line(tmp_path, capsys):
    from pairedit import cli

    assert cli.main(["train", "deepen", "--run", str(tmp_path)]) == 2
    assert "train deepen needs --dest" in capsys.readouterr().err
    assert cli.main(["train", "deepen", "--run", str(tmp_path / "empty"), "--dest", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pairedit: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "d" / "ip2p").exists()


def test_shape_twin_batches_put_each_scene_next_to_its_twin():
    from pairedit.training.trainers import shape_twin_batch

    pixels, captions = shape_twin_batch(3, random.Random(0))
    assert pixels.shape == (6, 64, 64, 3) and pixels.dtype == np.uint8 and len(captions) == 6
    for i in range(0, 6, 2):
        a, b = captions[i].split(), captions[i + 1].split()
        assert len(a) == len(b) and sum(x != y for x, y in zip(a, b)) == 1  # one shape word differs
        assert not np.array_equal(pixels[i], pixels[i + 1])
    again = shape_twin_batch(3, random.Random(0))
    assert np.array_equal(again[0], pixels) and again[1] == captions  # a step's batch is reproducible on resume


@requires_bundled
def test_clip_eval_measures_retrieval_and_shape_twins_on_the_bundle():
    from pairedit.training.evaluate import eval_clip

    res = eval_clip(*models.load_clip("bundled"), n=100, n_twins=200)
    assert res["caption_to_image_top1"] >= 0.9 and res["n_shape_twins"] == 200  # the gate (docs/models.md)
    # a caption picks its own scene over the same scene with one shape changed more often than chance
    assert 0.6 < res["shape_twins_caption_to_image"] <= 1 and 0.55 < res["shape_twins_image_to_caption"] <= 1


def test_absent_pairs_join_the_pool_with_after_equal_to_before(tmp_path):
    from pairedit.training import data, trainers

    vae = AutoencoderKL(**models.vae_config((8, 8, 8))).eval()
    with torch.no_grad():
        edits, lat = trainers.training_pairs(tmp_path, 2, 0, vae, absent=3)
    stream = data._pair_stream("absent", 0, 0)
    assert edits[2:] == [next(stream).edit for _ in range(3)] and lat["before"].shape[0] == 5
    assert torch.equal(lat["before"][2:], lat["after"][2:])  # same image, same latent: nothing to do
