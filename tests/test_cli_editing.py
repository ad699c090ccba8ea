"""`pairedit edit`, `pairedit sdedit` and `pairedit invert` end to end on tiny pipelines saved to disk."""

from __future__ import annotations

import random

import pytest

from pairedit.cli import main
from pairedit.world import random_scene, render


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    tiny.sd.save_pretrained(root / "sd")
    tiny.ip2p.save_pretrained(root / "ip2p")
    paths = []
    for k in range(2):
        path = root / f"scene{k}.png"
        render(random_scene(random.Random(k))).save(path)
        paths.append(str(path))
    (root / "broken.png").write_bytes(b"not an image")
    return root, paths


def run_error(capsys, argv: list[str]) -> str:
    """Run a failing command: exit code 2 and a single `pairedit: error:` line on stderr."""
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("pairedit:")]
    assert len(err) == 1 and err[0].startswith("pairedit: error: ")
    return err[0]


def test_edit(setup, tmp_path):
    root, paths = setup
    out = tmp_path / "out"
    assert main(["edit", *paths, "make the circle red", "-o", str(out), "--model", str(root / "ip2p"),
                 "--steps", "2", "--guidance", "5", "--image-guidance", "1.2", "--seed", "3"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "scene0.png", "scene1.png"]


def test_sdedit(setup, tmp_path):
    root, paths = setup
    out = tmp_path / "out"
    assert main(["sdedit", paths[0], "a red circle at night", "--strength", "0.5", "--steps", "4", "-o", str(out),
                 "--model", str(root / "sd")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png", "scene0.png"]


def test_invert_pti_save_then_load_for_other_targets(setup, tmp_path):
    root, paths = setup
    sd, inv = str(root / "sd"), str(tmp_path / "inv.safetensors")
    out = tmp_path / "a"
    assert main(["invert", paths[0], "--method", "pti", "--target", "a red circle", "--target", "a blue square",
                 "--steps", "10", "--save", inv, "-o", str(out), "--model", sd]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["edit-1-a-red-circle.png", "edit-2-a-blue-square.png",
                                                     "grid.png", "reconstruction.png"]
    out = tmp_path / "b"
    assert main(["invert", "--load", inv, "--target", "a green star", "--eta", "0.5", "--interpolation", "latent",
                 "-o", str(out), "--model", sd]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["edit.png", "grid.png", "reconstruction.png"]


@pytest.mark.parametrize("method,extra", [("ddim", []), ("nti", ["--iterations", "2", "--beta", "0.05"])])
def test_invert_ddim_and_nti(setup, tmp_path, method, extra):
    root, paths = setup
    out = tmp_path / method
    assert main(["invert", paths[1], "--method", method, "--prompt", "a circle", "--target", "a red circle",
                 "--steps", "6", *extra, "-o", str(out), "--model", str(root / "sd")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["edit.png", "grid.png", "reconstruction.png"]


@pytest.mark.parametrize("args,match", [
    (["edit", "{broken}", "make it red", "--model", "{ip2p}"], "broken.png"),
    (["edit", "{missing}", "make it red", "--model", "{ip2p}"], "missing.png: no such file"),
    (["edit", "{img}", "make it red", "--guidance", "-1", "--model", "{ip2p}"], "text guidance must be ≥ 0"),
    (["sdedit", "{img}", "a red circle", "--strength", "0", "--model", "{sd}"], "strength must be in (0, 1]"),
    (["sdedit", "{img}", "a red circle", "--strength", "1.5", "--model", "{sd}"], "strength must be in (0, 1]"),
    (["invert", "{img}", "--method", "diffedit", "--model", "{sd}"], "unknown inversion method 'diffedit'"),
    (["invert", "{img}", "--eta", "0", "--model", "{sd}"], "eta must be in (0, 1]"),
    (["invert", "{img}", "--eta", "1.2", "--model", "{sd}"], "eta must be in (0, 1]"),
    (["invert", "{img}", "--guidance", "-2", "--model", "{sd}"], "guidance must be ≥ 0"),
    (["invert", "{img}", "--method", "ddim", "--eta", "0.5", "--model", "{sd}"], "eta"),
    (["invert", "--load", "{missing}", "--model", "{sd}"], "no such inversion file"),
    (["invert", "--model", "{sd}"], "give an IMAGE"),
    (["invert", "{img}", "--method", "pti", "--model", "{ip2p}"], "text-to-image checkpoint"),
    (["sdedit", "{img}", "a red circle", "--model", "{ip2p}"], "text-to-image checkpoint"),
    (["edit", "{img}", "make it red", "--model", "{sd}"], "InstructPix2Pix checkpoint"),
])
def test_bad_input_is_one_line_exit_2(setup, tmp_path, capsys, args, match):
    root, paths = setup
    names = dict(broken=str(root / "broken.png"), missing=str(tmp_path / "missing.png"), img=paths[0],
                 ip2p=str(root / "ip2p"), sd=str(root / "sd"))
    argv = [a.format(**names) for a in args] + ["-o", str(tmp_path / "out")]
    assert match in run_error(capsys, argv)
    assert not (tmp_path / "out").exists()


def test_pti_on_instructpix2pix_names_the_checkpoint_needed(setup, tmp_path, capsys):
    root, paths = setup
    line = run_error(capsys, ["invert", paths[0], "--method", "pti", "-o", str(tmp_path), "--model", str(root / "ip2p")])
    assert "invert --method pti" in line and "runwayml/stable-diffusion-v1-5" in line


@pytest.mark.parametrize("command", ["edit", "sdedit", "invert"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    assert "--model" in capsys.readouterr().out
