"""`pairedit learn / apply / demo` through ``pairedit.cli.main`` with tiny models saved to disk."""

from __future__ import annotations

import pytest
from PIL import Image

from conftest import requires_bundled
from pairedit import world
from pairedit.cli import main


@pytest.fixture(scope="module")
def models(tiny_bundle):
    """--model and --clip folders: the tiny pipeline and CLIP saved with save_pretrained."""
    return ["--model", str(tiny_bundle / "ip2p"), "--clip", str(tiny_bundle / "clip")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A watercolor example pair and a test image as PNG files (64×64; the tiny model fits them to 32)."""
    root = tmp_path_factory.mktemp("images")
    pairs = world.direction_pairs(world.Edit("style_watercolor"), 2, seed=0)
    paths = {}
    for name, im in (("before", pairs[0].images()[0]), ("after", pairs[0].images()[1]), ("test", pairs[1].images()[0])):
        paths[name] = root / f"{name}.png"
        im.save(paths[name])
    (root / "notes.txt").write_text("not an image")
    paths["text"] = root / "notes.txt"
    Image.new("RGB", (96, 48), "white").save(root / "wide.png")
    paths["wide"] = root / "wide.png"
    return {k: str(v) for k, v in paths.items()}


@pytest.fixture(scope="module")
def learned(models, files, tmp_path_factory):
    out = tmp_path_factory.mktemp("learned") / "edit.safetensors"
    code = main(["learn", files["before"], files["after"], "-o", str(out), "--steps", "2", "--search-steps", "12",
                 *models])
    assert code == 0 and out.exists()
    return out


def test_learn_then_apply(models, files, learned, tmp_path, capsys):
    from pairedit.instruction import load_instruction

    inst = load_instruction(learned)
    assert inst.model_id == models[1] and len(inst.losses) == 2 and inst.init_text
    assert inst.config["init"] == "search" and inst.config["search_steps"] == 12  # the default init
    assert len(inst.pair_hashes) == 1 and len(inst.pair_hashes[0][0]) == 64
    out = tmp_path / "out"
    code = main(["apply", str(learned), files["test"], files["before"], "-o", str(out), "--steps", "3",
                 "--model", models[1]])
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == ["before_edited.png", "grid.png", "test_edited.png"]
    assert Image.open(out / "test_edited.png").size == (32, 32)
    assert "grid.png" in capsys.readouterr().out


def test_apply_hybrid_and_random_noise(models, files, learned, tmp_path):
    out = tmp_path / "out"
    code = main(["apply", str(learned), files["test"], "-o", str(out), "--steps", "2", "--prompt", "make it red",
                 "--noise", "random", "--seed", "3", "--guidance", "5", "--image-guidance", "1.2", "--model", models[1]])
    assert code == 0 and (out / "test_edited.png").exists()


def test_learn_with_init_text_and_guided_loss(models, files, tmp_path):
    out = tmp_path / "e.safetensors"
    code = main(["learn", files["before"], files["after"], "-o", str(out), "--steps", "1", "--init-text",
                 "make it a watercolor painting", "--loss-on", "guided", "--lr", "0.01", "--lambda-mse", "2",
                 "--lambda-clip", "0.5", "--seed", "4", *models])
    assert code == 0
    from pairedit.instruction import load_instruction

    inst = load_instruction(out)
    assert inst.init_text == "make it a watercolor painting"
    assert inst.config["loss_on"] == "guided" and inst.config["seed"] == 4 and inst.config["lambda_clip"] == 0.5


def test_learn_with_the_caption_init(models, files, tmp_path, capsys):
    out = tmp_path / "c.safetensors"
    assert main(["learn", files["before"], files["after"], "-o", str(out), "--steps", "1", "--init", "caption",
                 "--caption-steps", "5", *models]) == 0
    from pairedit.instruction import load_instruction

    inst = load_instruction(out)
    assert inst.config["init"] == "caption" and inst.config["caption_steps"] == 5 and inst.init_text
    assert repr(inst.init_text) in capsys.readouterr().out


def test_learn_with_the_bank_init(models, files, tmp_path, capsys):
    bank = tmp_path / "bank.txt"
    bank.write_text("make it night\nmake it a watercolor painting\nturn the circle red\n")
    out = tmp_path / "b.safetensors"
    assert main(["learn", files["before"], files["after"], "-o", str(out), "--steps", "1", "--init", "bank",
                 "--bank", str(bank), *models]) == 0
    from pairedit.instruction import load_instruction

    inst = load_instruction(out)
    assert inst.config["init"] == "bank" and inst.init_text in bank.read_text().splitlines()
    # A model folder without instructions.txt and no --bank: one line saying what to give, before loading.
    err = _fails(capsys, ["learn", files["before"], files["after"], "-o", str(tmp_path / "c.safetensors"),
                          "--init", "bank", *models], "instructions.txt")
    assert "one per line" in err
    _fails(capsys, ["learn", files["before"], files["after"], "-o", str(tmp_path / "c.safetensors"),
                    "--init", "search", "--bank", str(bank), *models], "--bank", "--init search")


def _fails(capsys, argv, *expected):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    # The error is one line, the last one (model loaders may draw progress bars before it).
    assert err.count("pairedit: error:") == 1 and "\n" not in err.split("pairedit: error:")[1], err
    for s in expected:
        assert s in err, err
    return err


def test_learn_bad_inputs(models, files, tmp_path, capsys):
    out = tmp_path / "e.safetensors"
    base = ["-o", str(out), "--steps", "1", *models]
    _fails(capsys, ["learn", files["before"], files["after"], files["test"], *base], "odd number")
    _fails(capsys, ["learn", files["before"], str(tmp_path / "missing.png"), *base], "missing.png")
    _fails(capsys, ["learn", files["before"], files["text"], *base], "notes.txt")
    _fails(capsys, ["learn", files["before"], files["wide"], *base], "wide.png", "aspect ratio")
    _fails(capsys, ["learn", files["before"], files["after"], "-o", files["after"], "--steps", "1", *models],
           "overwrite an input")
    empty = tmp_path / "empty.ckpt.safetensors"
    empty.write_bytes(b"")
    _fails(capsys, ["learn", files["before"], files["after"], *base, "--resume", str(empty)], "empty.ckpt.safetensors")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [empty]  # no partial output


def test_apply_bad_inputs(models, files, learned, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["-o", str(out), "--steps", "1", "--model", models[1]]
    empty = tmp_path / "empty.safetensors"
    empty.write_bytes(b"")
    _fails(capsys, ["apply", str(empty), files["test"], *base], "empty.safetensors")
    _fails(capsys, ["apply", files["test"], files["test"], *base], "test.png")  # an image is no instruction
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes(learned.read_bytes()[:100])
    _fails(capsys, ["apply", str(truncated), files["test"], *base], "cut.safetensors")
    _fails(capsys, ["apply", str(learned), files["text"], *base], "notes.txt")
    _fails(capsys, ["apply", str(learned), str(tmp_path / "nope.png"), *base], "nope.png")
    # A non-square image cannot reuse the recorded noises (one latent size) — and nothing is written.
    _fails(capsys, ["apply", str(learned), files["test"], files["wide"], *base, "--noise", "fixed"], "--noise random")
    assert not out.exists()


def test_apply_refuses_other_model(tiny, models, files, learned, tmp_path, capsys):
    from pairedit.models import tiny_pipelines

    other = tmp_path / "other"
    tiny_pipelines(seed=1)[0].save_pretrained(other)
    err = _fails(capsys, ["apply", str(learned), files["test"], "-o", str(tmp_path / "o"), "--model", str(other)],
                 str(other), models[1])
    assert "fingerprint" in err
    assert not (tmp_path / "o").exists()


def test_apply_never_overwrites_input(models, files, learned, tmp_path, capsys):
    src = tmp_path / "grid.png"  # the name of apply's grid output
    Image.open(files["test"]).save(src)
    before = src.read_bytes()
    _fails(capsys, ["apply", str(learned), str(src), "-o", str(tmp_path), "--steps", "1", "--model", models[1]],
           "grid.png", "overwrite an input")
    assert src.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]


@pytest.mark.parametrize("command", ["learn", "apply", "demo"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    assert "--model" in text and "--output" in text


@requires_bundled
def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "-o", str(tmp_path), "--steps", "5"]) == 0
    assert (tmp_path / "demo_grid.png").exists()
    assert "demo_grid.png" in capsys.readouterr().out


def test_ctrl_c_saves_checkpoint_and_resume_matches(models, files, tmp_path, monkeypatch, capsys):
    import torch

    from pairedit.instruction import load_instruction

    pair = [files["before"], files["after"], "--steps", "4", "--init-text", "make it a watercolor painting", *models]
    straight = tmp_path / "straight.safetensors"
    assert main(["learn", *pair, "-o", str(straight)]) == 0

    out = tmp_path / "edit.safetensors"
    calls = []
    step = torch.optim.AdamW.step

    def interrupted_step(self, *a, **k):  # Ctrl-C arrives during the third step
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", interrupted_step)
    assert main(["learn", *pair, "-o", str(out)]) == 130
    monkeypatch.undo()
    ckpt = tmp_path / "edit.ckpt.safetensors"
    assert ckpt.exists() and not out.exists()
    assert f"--resume {ckpt}" in capsys.readouterr().err

    assert main(["learn", *pair, "-o", str(out), "--resume", str(ckpt)]) == 0
    a, b = load_instruction(straight), load_instruction(out)
    assert torch.allclose(a.cond, b.cond, atol=1e-6) and torch.equal(a.noise_table, b.noise_table)
    assert a.losses == pytest.approx(b.losses)
