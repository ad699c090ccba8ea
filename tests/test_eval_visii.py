"""scripts/eval_visii.py (the measurement behind docs/visii.md) end to end on tiny random-weight models.

Smallest sizes: 1 direction in each of 2 categories, 1 test image, 2 learning / caption / sampling steps.
Checks that the doc, the raw JSON and the grid exist and hold every section, and that a rerun resumes
from the cache without computing anything.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "eval_visii.py"


@pytest.fixture(scope="module")
def eval_visii():
    spec = importlib.util.spec_from_file_location("eval_visii", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["eval_visii"] = module  # dataclasses look their module up while the script is executed
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("eval_visii", None)


@pytest.fixture(scope="module")
def bundle(tiny_bundle, tmp_path_factory):
    """The tiny bundle with an instruction bank next to its InstructPix2Pix, as `pairedit train export` writes."""
    import shutil

    from pairedit import world

    root = tmp_path_factory.mktemp("bundle-with-bank") / "bundle"
    shutil.copytree(tiny_bundle, root)
    (root / "ip2p" / "instructions.txt").write_text("\n".join(world.training_instructions()[::20]) + "\n")
    return root


def tiny_argv(bundle, tmp: Path) -> list[str]:
    return ["--model", str(bundle), "--categories", "recolor,style", "--directions-per-category", "1", "--tests", "1",
            "--style-tests", "1",
            "--steps", "2", "--caption-steps", "2", "--search-steps", "3", "--sample-steps", "2",
            "--out", str(tmp / "docs"),
            "--cache", str(tmp / "cache"), "--no-progress"]


def test_writes_doc_json_grid_and_resumes(eval_visii, bundle, tmp_path, capsys):
    argv = tiny_argv(bundle, tmp_path)
    assert eval_visii.main(argv) == 0
    first = capsys.readouterr().out
    assert "units (28 computed)" in first  # 2 directions × 6 + 3 styles × 4 + hybrid × 4
    assert "RECOMMENDATION: VisiiConfig.loss_on = " in first

    doc = (tmp_path / "docs" / "visii.md").read_text()
    for heading in ("## 1. Edit success", "## 2. Ambiguous drawing styles", "## 3. Hybrid instruction",
                    "## 4. `loss_on`", "## 5. Fixed vs random noise", "## 6. Where c_T starts", "## Examples"):
        assert heading in doc
    assert "python scripts/eval_visii.py --model" in doc and "Wall time" in doc
    assert "RECOMMENDATION" in doc and "**Criterion (does both edits):**" in doc
    assert "| recolor | 1 |" in doc and "| style | 1 |" in doc and "| **all** | 2 |" in doc
    assert "VISII, init `caption`, reproduces" in doc and "VISII, init `search`, reproduces" in doc
    assert all(f"| VISII, init `{i}` |" in doc for i in ("bank", "search", "caption"))  # §3, every init
    for style in ("sketch", "ink", "watercolor"):
        assert f"| {style} | 1 |" in doc
    assert "turn the circle into a star" in doc

    results = json.loads((tmp_path / "docs" / "visii" / "results.json").read_text())
    assert results["sizes"]["steps"] == 2 and results["sizes"]["search_steps"] == 3
    assert results["loss_comparison"]["n"] == 4
    by = {}
    for row in results["rows"]:
        by.setdefault((row["section"], row["method"], row["variant"]), []).append(row)
    assert len(by[("edit", "ip2p", "random")]) == 2
    for loss in ("conditional", "guided"):
        for noise in ("fixed", "random"):
            rows = by[("edit", f"visii-{loss}", noise)]
            assert len(rows) == 2 and all({"edit_success", "psnr", "clip_image_similarity"} <= set(r["scores"])
                                          for r in rows)
    # the default init applies with the library's noise, the others with the fixed noise they were measured with
    from pairedit.visii import DEFAULT_NOISE

    assert DEFAULT_NOISE == "random"
    for init, noise in (("words", "fixed"), ("search", "fixed"), ("bank", DEFAULT_NOISE)):
        assert len(by[("init", f"visii-{init}", noise)]) == 2
    bank = (bundle / "ip2p" / "instructions.txt").read_text().splitlines()
    assert all(r["init_text"] in bank for r in by[("init", "visii-bank", DEFAULT_NOISE)])
    true_words = {r["direction"]: r["instruction"] for r in by[("edit", "ip2p", "random")]}
    assert all(r["init_text"] == true_words[r["direction"]] for r in by[("init", "visii-words", "fixed")])
    assert "| user's words | 2 |" in doc and "| search | 2 |" in doc and "| caption (paper) | 2 |" in doc
    assert "| bank (default) | 2 |" in doc
    assert len(by[("drawing", "visii-search", "fixed")]) == 3 and len(by[("drawing", "visii-bank", DEFAULT_NOISE)]) == 3
    assert len(by[("drawing", "visii", "fixed")]) == 3 and len(by[("drawing", "ip2p-vague", "random")]) == 3
    assert all(r["scores"]["nearest_style"] in ("sketch", "ink", "watercolor", "none")
               for r in by[("drawing", "visii", "fixed")])
    assert {k[2] for k in by if k[0] == "hybrid"} == {"learned + words", "learned only", "both in words",
                                                      "replace words"}
    assert all(r["scores"]["nearest_after"] in ("both", "style only", "replace only", "none")
               for k, rs in by.items() if k[0] == "hybrid" for r in rs)

    with Image.open(tmp_path / "docs" / "visii" / "grid.png") as im:
        assert im.width > 6 * 128 and im.height > 6 * 128  # 6 columns; rows: 2 directions + 3 styles + hybrid

    # A rerun reads every unit from the cache and writes the same tables.
    assert eval_visii.main(argv) == 0
    assert "units (0 computed)" in capsys.readouterr().out
    again = (tmp_path / "docs" / "visii.md").read_text()
    strip = [ln for ln in again.splitlines() if not ln.startswith("- Wall time")]
    assert strip == [ln for ln in doc.splitlines() if not ln.startswith("- Wall time")]


def test_shards_compute_disjoint_units_and_the_full_run_reads_them(eval_visii, bundle, tmp_path, capsys):
    argv = tiny_argv(bundle, tmp_path)
    for i in range(2):
        assert eval_visii.main([*argv, "--shard", f"{i}/2"]) == 0
        assert f"shard {i}/2: 14 of 28 units (14 computed)" in capsys.readouterr().out
    assert not (tmp_path / "docs" / "visii.md").exists()  # shards write no report
    assert len(list((tmp_path / "cache" / "units").glob("*.json"))) == 28
    assert eval_visii.main(argv) == 0
    assert "28 units (0 computed)" in capsys.readouterr().out
    assert (tmp_path / "docs" / "visii.md").exists()

    # A damaged record is recomputed, not trusted.
    victim = sorted((tmp_path / "cache" / "units").glob("*.json"))[0]
    victim.write_text(victim.read_text().replace('"seconds"', '"Seconds"'))
    assert eval_visii.main(argv) == 0
    captured = capsys.readouterr()
    assert "28 units (1 computed)" in captured.out and "recomputing a damaged cache entry" in captured.err


def test_sections_measure_only_the_parts_asked_for(eval_visii, bundle, tmp_path, capsys):
    """--sections drawing: §2's 12 units only, a report with §2 and the examples; drawing records hold both the
    exact-pixel and the blurred style shares."""
    assert eval_visii.main([*tiny_argv(bundle, tmp_path), "--sections", "drawing"]) == 0
    out = capsys.readouterr().out
    assert "12 units (12 computed)" in out and "RECOMMENDATION" not in out
    doc = (tmp_path / "docs" / "visii.md").read_text()
    assert "## 2. Ambiguous drawing styles" in doc and "## Examples" in doc and "Sections measured: `drawing`" in doc
    assert "## 1. Edit success" not in doc and "## 3. Hybrid" not in doc and "## 4. `loss_on`" not in doc
    assert "reproduces, *pixels*" in doc
    for style in ("sketch", "ink", "watercolor"):
        assert f"| {style} | 1 |" in doc
    records = [json.loads(f.read_text()) for f in (tmp_path / "cache" / "units").glob("*.json")]
    assert len(records) == 12 and all(r["section"] == "drawing" for r in records)
    for r in records:
        assert set(r["shares_blurred"]) == set(r["shares"])
        assert all(sum(v.values()) == pytest.approx(1.0) for v in r["shares_blurred"].values())


def test_unknown_section_is_a_user_error(eval_visii, tmp_path, capsys):
    assert eval_visii.main(["--sections", "drawing,colour", "--out", str(tmp_path)]) == 2
    assert "--sections: unknown ['colour']" in capsys.readouterr().err


def test_bad_shard_is_a_user_error(eval_visii, tmp_path, capsys):
    assert eval_visii.main(["--shard", "2/2", "--out", str(tmp_path)]) == 2
    assert "need 0 ≤ I < N" in capsys.readouterr().err


def test_bad_category_fails_before_loading_models(eval_visii, tmp_path, capsys):
    assert eval_visii.main(["--categories", "recolor,colour", "--model", str(tmp_path / "nowhere"),
                            "--out", str(tmp_path)]) == 2
    assert "unknown categories ['colour']" in capsys.readouterr().err
    assert not (tmp_path / "visii.md").exists()


def test_fixed_vs_random_pairs_each_test_image_with_itself(eval_visii):
    def record(direction, fixed, rnd):
        return {"section": "edit", "loss_on": eval_visii.DEFAULT_LOSS, "direction": direction,
                "images": [{"test": t, "variant": v, "scores": {"clip_image_similarity": s}}
                           for t, (a, b) in enumerate(zip(fixed, rnd)) for v, s in (("fixed", a), ("random", b))]}

    records = [record("d0", [0.5, 0.6], [0.4, 0.6]), record("d1", [0.2], [0.3]),
               {**record("d2", [0.9], [0.0]), "loss_on": "other"}]  # another loss is not paired in
    assert sorted(eval_visii.paired_differences(records, "clip_image_similarity")) == pytest.approx([-0.1, 0.0, 0.1])


def test_style_tests_size_the_drawing_and_hybrid_sections(eval_visii):
    """--style-tests sizes §2 and §3 (one learning run each), --tests the directions of §1/4/5; more test images
    keep the first ones (the same example pair and test scenes, then more)."""
    sizes = eval_visii.sizes_of(eval_visii.parse_args(["--tests", "1", "--style-tests", "3"]))
    fewer = eval_visii.sizes_of(eval_visii.parse_args(["--tests", "1", "--style-tests", "2"]))
    assert all(len(d.tests) == 1 for d in eval_visii.edit_directions(sizes))
    for three, two in zip(eval_visii.drawing_directions(sizes), eval_visii.drawing_directions(fewer)):
        assert len(three.tests) == 3 and three.examples == two.examples and three.tests[:2] == two.tests
    hybrid = eval_visii.hybrid_direction(sizes)
    assert len(hybrid.tests) == 3 and hybrid.tests[:2] == eval_visii.hybrid_direction(fewer).tests


def test_bank_units_are_keyed_by_the_bank(eval_visii, bundle, tmp_path):
    """A changed instruction bank reruns the bank-init units (their pick depends on it) and no other unit."""
    import shutil

    other = tmp_path / "bundle"
    shutil.copytree(bundle, other)
    bank_file = other / "ip2p" / "instructions.txt"
    bank_file.write_text(bank_file.read_text() + "make the circle purple\n")
    keys = []
    for root in (bundle, other):
        args = eval_visii.parse_args(tiny_argv(root, tmp_path))
        sizes = eval_visii.sizes_of(args)
        ctx = eval_visii.Context(args, sizes)
        keys.append({(u.section, u.method, u.direction.key, u.loss_on): ctx.key(u) for u in eval_visii.make_units(sizes)})
    changed = {k for k in keys[0] if keys[0][k] != keys[1][k]}
    assert changed and all(method.endswith("bank") for _, method, _, _ in changed)
    assert changed == {k for k in keys[0] if k[1].endswith("bank")}
