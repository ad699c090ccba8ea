"""scripts/eval_inversion.py and scripts/eval_editing.py end to end on tiny random-weight models.

The numbers mean nothing here (random weights); the tests check that every table, row, plot and the
raw-number JSON is written, and that a rerun takes everything from the cache.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """Import scripts/<name>.py under its own name (eval_editing imports eval_inversion by that name)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def model_dirs(tiny_bundle):
    """The tiny pipelines saved as model folders, so the scripts run their real loading code."""
    return {k: str(tiny_bundle / k) for k in ("sd", "ip2p", "clip")}


@pytest.fixture
def scripts(monkeypatch):
    """Both scripts with --quick shrunk further: two guidance values, two iteration counts, two η, ..."""
    ei = load_script("eval_inversion")
    ee = load_script("eval_editing")
    small = replace(ei.QUICK, omegas=(0.0, 7.5), iterations=(1, 2), etas=(0.5, 1.0))
    monkeypatch.setattr(ei, "QUICK", small)
    monkeypatch.setattr(ee, "QUICK", replace(ee.QUICK, s_images=(1.0, 2.2), s_texts=(7.5, 10.0),
                                             strengths=(0.3, 0.9), inversion=small))
    return ei, ee


def assert_png(path: Path) -> None:
    assert path.is_file()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width > 100


def test_eval_inversion_writes_every_table_and_reruns_from_the_cache(scripts, model_dirs, tmp_path, monkeypatch):
    ei, _ = scripts
    argv = ["--model", model_dirs["sd"], "--clip", model_dirs["clip"], "--quick", "--n", "2", "--steps", "2",
            "--out", str(tmp_path)]
    doc = ei.main(argv)
    text = doc.read_text()
    assert doc == tmp_path / "inversion.md"
    for heading in ("PTI Table 2", "PTI Table 3", "PTI Table 1", "PTI Eq. 9", "Time on this CPU"):
        assert heading in text
    for row in ("| AE |", "| DDIM |", "| NTI |", "| PTI |", "| NTI, β = 0.01 |", "| PTI, β = 0.01 |",
                "| NTI, β = 0.1 |", "| PTI, β = 0.1 |", "| ω_enc = 0 |", "| ω_enc = 7.5 |", "| DDIM-Edit |",
                "| PTI η = 0.5 |", "| PTI η = 1 |", "| input unchanged |", "| DDIM edit |", "| PTI edit |"):
        assert row in text, row
    assert "| N = 1 | N = 2 |" in text and "ω_dec = 7.5" in text
    assert "Expected order AE ≥ PTI > NTI ≫ DDIM" in text and ("**held**" in text or "**did not hold**" in text)
    assert "--quick --n 2 --steps 2" in text  # the exact command
    assert "| – |" not in text.split("## Reconstruction")[1].split("## Time")[0]  # every measured cell filled
    for name in ("table1.png", "table3.png", "editing.png"):
        assert_png(tmp_path / "inversion" / name)
    results = json.loads((tmp_path / "inversion" / "results.json").read_text())["results"]
    # per image: AE, 2×2 Table 1 cells (one is Table 2's DDIM), NTI, PTI, 2 β × 2 N × 2 methods (PTI N=1, β=0.1
    # is Table 2's PTI); per pair: DDIM-Edit and 2 η
    assert len(results) == 2 * (1 + 4 + 2 + 8 - 1) + 2 * 3
    assert all("seconds" in r for r in results.values())

    def must_not_run(*args, **kwargs):
        raise AssertionError("a cached setting was computed again")

    monkeypatch.setattr(ei, "invert", must_not_run)
    monkeypatch.setattr(ei, "ae_reconstruction", must_not_run)
    assert ei.main(argv).read_text().split("Command:")[1] == text.split("Command:")[1]


def test_eval_inversion_shards_then_merges_without_recomputing(scripts, model_dirs, tmp_path, monkeypatch):
    """--shard 0/2 and 1/2 split the images and pairs; the run without --shard computes nothing more."""
    ei, _ = scripts
    argv = ["--model", model_dirs["sd"], "--clip", model_dirs["clip"], "--quick", "--n", "2", "--steps", "2",
            "--out", str(tmp_path)]
    halves = [json.loads(ei.main([*argv, "--shard", f"{i}/2"]).read_text())["results"] for i in range(2)]
    assert halves[0] and halves[1] and not set(halves[0]) & set(halves[1])
    assert not (tmp_path / "inversion.md").exists()

    def must_not_run(*args, **kwargs):
        raise AssertionError("a setting computed by a shard was computed again")

    monkeypatch.setattr(ei, "invert", must_not_run)
    monkeypatch.setattr(ei, "ae_reconstruction", must_not_run)
    assert ei.main(argv) == tmp_path / "inversion.md"
    assert json.loads((tmp_path / "inversion" / "results.json").read_text())["results"] == {**halves[0], **halves[1]}
    assert not list((tmp_path / "inversion").glob("results.shard-*"))


def test_eval_editing_writes_every_curve(scripts, model_dirs, tmp_path):
    _, ee = scripts
    doc = ee.main(["--ip2p", model_dirs["ip2p"], "--sd", model_dirs["sd"], "--clip", model_dirs["clip"], "--quick",
                   "--n", "2", "--steps", "4", "--out", str(tmp_path)])
    text = doc.read_text()
    for heading in ("### InstructPix2Pix, s_T = 7.5", "### InstructPix2Pix, s_T = 10", "### SDEdit", "### PTI",
                    "### DDIM-Edit", "## Best point of each method"):
        assert heading in text, heading
    for row in ("| s_I = 1 |", "| s_I = 2.2 |", "| strength = 0.3 |", "| strength = 0.9 |", "| η = 0.5 |",
                "| η = 1 |", "| DDIM-Edit |", "| input unchanged |"):
        assert row in text, row
    assert "edit success" in text and "--quick --n 2 --steps 4" in text
    assert_png(tmp_path / "editing" / "tradeoff.png")
    results = json.loads((tmp_path / "editing" / "results.json").read_text())["results"]
    assert len(results) == 2 * (2 * 2 + 2 + 1 + 2)  # IP2P s_T × s_I, SDEdit, DDIM-Edit, PTI η
    assert all("edit_success" in r and "clip_directional_similarity" in r for r in results.values())


def test_eval_editing_shards_then_merges_without_recomputing(scripts, model_dirs, tmp_path, monkeypatch):
    """--shard 0/2 and 1/2 compute disjoint halves of the pairs; the run without --shard takes both over,
    computes nothing and writes the same results a single run would hold."""
    _, ee = scripts
    argv = ["--ip2p", model_dirs["ip2p"], "--sd", model_dirs["sd"], "--clip", model_dirs["clip"], "--quick",
            "--n", "2", "--steps", "4", "--out", str(tmp_path)]
    halves = [json.loads(ee.main([*argv, "--shard", f"{i}/2"]).read_text())["results"] for i in range(2)]
    pairs = [{key.split(" | ")[1] for key in half} for half in halves]
    assert len(pairs[0]) == len(pairs[1]) == 1 and pairs[0] != pairs[1]
    assert not (tmp_path / "editing.md").exists()  # a shard writes no report

    def must_not_run(*args, **kwargs):
        raise AssertionError("a setting computed by a shard was computed again")

    for name in ("ip2p_edit", "sdedit"):
        monkeypatch.setattr(ee, name, must_not_run)
    monkeypatch.setattr(ee.ei, "invert", must_not_run)
    assert ee.main(argv) == tmp_path / "editing.md"
    merged = json.loads((tmp_path / "editing" / "results.json").read_text())["results"]
    assert merged == {**halves[0], **halves[1]}
    assert not list((tmp_path / "editing").glob("results.shard-*"))  # taken over, then removed
    with pytest.raises(SystemExit, match="--shard"):
        ee.main([*argv, "--shard", "2/2"])


def test_diagnose_ip2p_runs_every_diagnostic(model_dirs, monkeypatch, tmp_path):
    """scripts/diagnose_ip2p.py on the tiny model: every sweep setting, every branch at every t and every split
    is scored."""
    diag = load_script("diagnose_ip2p")
    monkeypatch.setattr(diag, "SWEEP", diag.SWEEP[:2])
    pipe = diag.load(model_dirs["ip2p"], None)
    swept = diag.sweep(pipe, n=2)
    assert len(swept) == 2 and all(0 <= r["edit_success"] <= 1 for r in swept.values())
    x0 = diag.x0_by_branch(pipe, n=2, timesteps=(900, 20))
    assert set(x0) == {"exact_latent", 900, 20}
    assert set(x0[900]) == {"e(c_I,c_T)", "e(c_I,0)", "e(0,0)", "guided"}
    from pairedit.training.data import pairs_dataset

    pairs_dataset(tmp_path / "data" / "pairs.npz", 3, seed=0)  # a run folder's cached training pairs
    split = diag.loss_by_split(pipe, n=3, run=str(tmp_path))
    assert set(split) == {"trained_on", "new_train_split", "held_out"}
    assert all(r["mse"] > 0 for r in split.values())
    bound = diag.binding(pipe, n=2)
    assert bound["all"]["n"] == 2 and len(bound["per_pair_edit_success"]) == 2
    both = diag.compound(pipe, n=2)  # each held-out compound worded twice: " and ", and a bare space
    assert both["and"]["all"]["n"] == both["space"]["all"]["n"] == 2 and len(both["per_pair_nearest"]) == 4
    assert set(both["per_pair_nearest"]) <= set(diag.COMPOUND_OUTCOMES)
    assert sum(both["all"][k] for k in diag.COMPOUND_OUTCOMES) == pytest.approx(1)
    gone = diag.absent(pipe, n=3)  # edits naming a shape the scene lacks: left alone, or an object edited?
    assert 1 <= gone["all"]["n"] <= 3 and len(gone["per_pair_left_alone"]) == gone["all"]["n"]
    assert 0 <= gone["all"]["left_alone"] <= 1
    sampled_with, edit = [], diag.ip2p_edit  # --sampling-steps reaches the sampler
    monkeypatch.setattr(diag, "ip2p_edit", lambda *a, **kw: sampled_with.append(kw["steps"]) or edit(*a, **kw))
    diag.binding(pipe, n=1, steps=3)
    assert sampled_with == [3]


def test_diagnose_ip2p_pairs_a_measurement_with_an_earlier_one(tmp_path):
    """--against: McNemar on per-pair edit success, reading this script's --json or a `train eval` entry."""
    diag = load_script("diagnose_ip2p")
    new = {"per_pair_edit_success": "1101111"}
    entry = {"per_pair_edit_success": "1010000"}
    for old, key in (({"results": entry}, ""), ({"ip2p": entry}, ""), ({"gate_56018": entry, "other": {}}, ":gate_56018")):
        path = tmp_path / "old.json"
        path.write_text(json.dumps(old))
        res = diag.paired_against(new, str(path) + key)
        assert (res["only_old"], res["only_new"]) == (1, 5)
        assert res["p"] == pytest.approx(2 * (1 + 6) / 2**6)  # exact two-sided: 2·P(X ≤ 1), X ~ Bin(6, 1/2)
        assert res["old_edit_success"] == pytest.approx(2 / 7) and res["new_edit_success"] == pytest.approx(6 / 7)


def test_diagnose_ip2p_progress_fits_the_gate_against_log_steps(tmp_path):
    """progress: points from `train eval` files or FILE@STEPS, the ln(steps) trend from --fit-from on, a plot."""
    diag = load_script("diagnose_ip2p")
    for steps in (1_000, 10_000, 20_000, 40_000):  # exactly 0.5 + 0.1·log2(steps / 10,000) from 10,000 on
        success = 0.5 + 0.1 * math.log2(steps / 10_000) if steps >= 10_000 else 0.1
        entry = {"edit_success": success, "unet_trained_steps": steps}
        (tmp_path / f"s{steps}.json").write_text(json.dumps({"ip2p": entry} if steps > 1_000 else {"gate": entry}))
    (tmp_path / "bare.json").write_text(json.dumps({"edit_success": 0.5}))
    points = [str(tmp_path / f"s{s}.json") for s in (10_000, 20_000, 40_000)] + [str(tmp_path / "s1000.json:gate")]
    res = diag.progress(points + [str(tmp_path / "bare.json") + "@10000"], fit_from=10_000,
                        png=str(tmp_path / "p.png"))
    assert [p["steps"] for p in res["points"]] == [10_000, 20_000, 40_000, 1_000, 10_000]
    assert res["fit"]["n"] == 4 and res["fit"]["per_doubling"] == pytest.approx(0.1)
    assert res["fit"]["steps_for_gate"] == pytest.approx(10_000 * 2 ** 3.5)  # 0.5 + 0.1·3.5 = 0.85
    assert (tmp_path / "p.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="@STEPS"):
        diag.progress([str(tmp_path / "bare.json")], fit_from=0, png=None)


def test_diagnose_ip2p_plateau_splits_pairs_by_how_many_runs_won_them(model_dirs, tmp_path):
    """plateau: pairs won by every run, lost by every run, or flipping; the best-of union; nested FILE:KEY:KEY."""
    diag = load_script("diagnose_ip2p")
    (tmp_path / "a.json").write_text(json.dumps({"gates": {"ip2p": {"per_pair_edit_success": "1100"}}}))
    (tmp_path / "b.json").write_text(json.dumps({"results": {"per_pair_edit_success": "1010"}}))
    pipe = diag.load(model_dirs["ip2p"], None)
    res = diag.plateau(pipe, [str(tmp_path / "a.json") + ":gates:ip2p", str(tmp_path / "b.json")], seeds=1)
    assert res["n"] == 4 and res["edit_success_each"] == [0.5, 0.5]
    assert res["always_won"] == 1 and res["always_failed"]["n"] == 1 and res["flipping"]["n"] == 2
    assert res["best_of_edit_success"] == pytest.approx(3 / 4)
    assert [r["index"] for r in res["rows"]] == [1, 2, 3]  # the pairs not always won, each retried once
    assert all(r["other_seed_success"] in (0.0, 1.0) for r in res["rows"])
    for part in ("always_failed", "flipping"):
        d = res[part]
        assert sum(d["by_category"].values()) == d["n"]
        assert sum(d["targeted_by_objects_in_scene"].values()) + d["not_targeted"] == d["n"]
        assert 0 <= d["fail_vae_ceiling"] <= d["n"]


def test_compare_inits_runs_shards_and_merges(model_dirs, tmp_path):
    """scripts/compare_inits.py: both inits on every direction of a shard, then the merged McNemar summary."""
    compare = load_script("compare_inits")
    common = ["--seed", "1", "--model", str(Path(model_dirs["ip2p"]).parent), "--categories", "recolor,style",
              "--directions-per-category", "1", "--tests", "2", "--steps", "2", "--caption-steps", "2",
              "--search-steps", "3", "--sample-steps", "2"]
    for i in range(2):
        assert compare.main([*common, "--shard", f"{i}/2", "--out", str(tmp_path / f"{i}.json")]) == 0
    assert compare.main(["--merge", str(tmp_path / "0.json"), str(tmp_path / "1.json"),
                         "--out", str(tmp_path / "all.json")]) == 0
    result = json.loads((tmp_path / "all.json").read_text())
    assert result["seed"] == 1 and len(result["rows"]) == 4  # 2 directions × 2 inits
    assert {r["init"] for r in result["rows"]} == {"caption", "search"}
    assert all(len(r["success"]) == 2 for r in result["rows"])
    s = result["summary"]
    assert s["n"] == 4 and 0 <= s["p"] <= 1
    # eval_visii's object edits are held-out (edit, shape) combinations, style edits have no shape.
    assert {r["category"]: r["heldout_combo"] for r in result["rows"]} == {"recolor": True, "style": False}
    assert result["summary_heldout_combos"]["n"] == 2
    assert result["init_is_a_true_wording"] == {v: sum(r["init_is_a_true_wording"] for r in result["rows"]
                                                        if r["init"] == v) for v in ("caption", "search")}
    by = {(r["direction"], r["init"]): r["success"] for r in result["rows"]}
    assert s["only_search"] == sum(a and not b for d in {r["direction"] for r in result["rows"]}
                                   for a, b in zip(by[(d, "search")], by[(d, "caption")]))
    # Another pair of variants, reusing the search rows: only the new variant is computed.
    out = tmp_path / "steps.json"
    assert compare.main([*common, "--variants", "search", "search-3x-steps", "--reuse", str(tmp_path / "all.json"),
                         "--out", str(out)]) == 0
    steps = json.loads(out.read_text())
    assert steps["configs"] == {"search": {}, "search-3x-steps": {"steps_times": 3}}
    assert sorted(r["init"] for r in steps["rows"]) == ["search", "search", "search-3x-steps", "search-3x-steps"]
    assert [r for r in steps["rows"] if r["init"] == "search"] == [r for r in result["rows"] if r["init"] == "search"]
    assert steps["summary"]["n"] == 4 and "only_search-3x-steps" in steps["summary"]
    # The reference: InstructPix2Pix given the true instruction, nothing learned.
    out = tmp_path / "words.json"
    assert compare.main([*common, "--variants", "ip2p-words", "search", "--reuse", str(tmp_path / "all.json"),
                         "--out", str(out)]) == 0
    words = [r for r in json.loads(out.read_text())["rows"] if r["init"] == "ip2p-words"]
    truth = {d.key: d.instruction for d in compare.directions(1, common[2:])}
    assert len(words) == 2 and all(r["init_text"] == truth[r["direction"]] for r in words)
    assert all(r["init_is_a_true_wording"] and len(r["success"]) == 2 for r in words)
    from pairedit.visii import VisiiConfig

    assert compare.overrides(VisiiConfig(), compare.VARIANTS["bank"][1]) == {"init": "bank"}
    assert compare.overrides(VisiiConfig(), compare.VARIANTS["search-3x-steps"][1]) == {"steps": 3000}



def test_compare_inits_bank_learns_from_the_bank_swap_runs_pick(tiny_bundle, tmp_path):
    """Variants bank and bank-swap: bank-swap runs first and records its bank pick; the bank row learns from that
    pick (not ranking the bank again), which is what init="bank" would have picked."""
    import shutil

    from pairedit import world

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / "ip2p" / "instructions.txt").write_text("\n".join(world.training_instructions()[::20]) + "\n")
    compare = load_script("compare_inits")
    out = tmp_path / "swap.json"
    assert compare.main(["--seed", "1", "--model", str(bundle), "--categories", "recolor", "--directions-per-category",
                         "1", "--tests", "1", "--steps", "2", "--sample-steps", "2", "--variants", "bank", "bank-swap",
                         "--out", str(out)]) == 0
    rows = {r["init"]: r for r in json.loads(out.read_text())["rows"]}
    bank = (bundle / "ip2p" / "instructions.txt").read_text().splitlines()
    trace = rows["bank-swap"]["init_trace"]
    assert len(trace) == 2 and trace[0] in bank and rows["bank-swap"]["init_text"] == trace[1]
    assert rows["bank"]["init_text"] == trace[0]
    alone = compare.run(1, (0, 1), ["--model", str(bundle), "--categories", "recolor", "--directions-per-category", "1",
                                    "--tests", "1", "--steps", "2", "--sample-steps", "2"], ("bank",))
    assert [(r["init_text"], r["success"]) for r in alone] == [(rows["bank"]["init_text"], rows["bank"]["success"])]

def test_compare_inits_variants_that_differ_in_applying_share_one_learning(tiny_bundle, tmp_path, monkeypatch):
    """Three or more variants: the plain bank variants rank the bank once, and those that differ only in the apply
    noise share one learned instruction; each other variant is also summarised against the first."""
    from pairedit import world
    from pairedit.visii import VisiiConfig

    compare = load_script("compare_inits")
    bank = world.all_instructions()[::40]
    monkeypatch.setattr(compare, "bank_of", lambda change: bank if change.get("bank") == "language" else None)
    monkeypatch.setitem(compare.VARIANTS, "bank-language-250", ("search", {"init": "bank", "bank": "language",
                                                                           "steps": 3}))
    learns, noises = [], []
    learn, visii = compare.ev.Context.learn, compare.ev.Context.visii
    monkeypatch.setattr(compare.ev.Context, "learn",
                        lambda self, unit, **kw: learns.append(kw) or learn(self, unit, **kw))
    monkeypatch.setattr(compare.ev.Context, "visii", lambda self, inst, d, t, noise="fixed", **kw:
                        noises.append(noise) or visii(self, inst, d, t, noise, **kw))
    out = tmp_path / "noise.json"
    variants = ["bank-language", "bank-language-random", "bank-language-250"]
    assert compare.main(["--seed", "1", "--model", str(tiny_bundle), "--categories", "recolor",
                         "--directions-per-category", "1", "--tests", "2", "--steps", "2", "--sample-steps", "2",
                         "--variants", *variants, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = {r["init"]: r for r in result["rows"]}
    pick = rows["bank-language"]["init_text"]
    assert pick in bank and all(rows[v]["init_text"] == pick for v in variants)
    # one ranking of the bank and 2 learning steps, then the 3-step learning from its pick; nothing else
    assert [(kw["init_text"], kw.get("steps")) for kw in learns] == [(None, None), (pick, 3)]
    assert noises == ["fixed"] * 2 + ["random"] * 2 + ["fixed"] * 2
    assert set(result["summaries"]) == {f"{v} vs bank-language" for v in variants[1:]}
    assert result["summary"] == result["summaries"]["bank-language-random vs bank-language"]
    assert compare.overrides(VisiiConfig(), compare.VARIANTS["bank-language-250-random"][1]) == {"init": "bank",
                                                                                                "steps": 250}
    assert compare.noise_of(compare.VARIANTS["bank-language-250-random"][1]) == "random"


def test_diagnose_visii_ranks_the_true_shape_word_among_its_swaps(model_dirs, tmp_path):
    """scripts/diagnose_visii.py: every shape-swapped wording of an object edit scored three ways, the true rank kept."""
    diag = load_script("diagnose_visii")
    from pairedit import world

    # A replace edit never names its own new shape; the true wording is among the candidates.
    texts = diag.shape_candidates(world.Edit("replace_hexagon", target="diamond"))
    assert len(texts) == len(world.SHAPES) - 1 and "turn the diamond into a hexagon" in texts
    assert not any("hexagon into" in t for t in texts)
    assert diag.rank_of([0.3, 0.1, 0.3, 0.5], 0) == 2 and diag.rank_of([0.1, 0.1], 1) == 1
    out = tmp_path / "words.json"
    diag.main(["--model", str(Path(model_dirs["ip2p"]).parent), "--limit", "1", "--edit-seeds", "1",
               "--samples", "2", "--out", str(out)])
    res = json.loads(out.read_text())
    (row,) = res["rows"]
    n = len(row["candidates"])
    edit_type, target = row["edit"].split("/")  # an object edit: its type and the shape it names
    assert row["candidates"][row["true"]] == world.Edit(edit_type, target=target).instruction(wording=0)
    for key in ("mse", "clip", "edit"):
        assert len(row["scores"][key]) == n
        assert row["rank"][key] == diag.rank_of(row["scores"][key], row["true"])
        assert res["summary"][key]["first"] == (row["rank"][key] == 1)
    assert res["summary"]["n"] == 1 and res["summary"]["chance_first"] == 1 / n
    # the MSE term's paired z: 0 for the true wording, negative where a candidate fits the pair better
    assert len(row["mse_paired_z"]) == n and row["mse_paired_z"][row["true"]] == 0.0
    assert row["best_other"] in row["candidates"] and row["best_other"] != row["candidates"][row["true"]]
    assert row["best_other_z"] == row["mse_paired_z"][row["candidates"].index(row["best_other"])]
    s = res["summary"]
    assert s["mse_wrong_word_wins_beyond_noise"] + s["mse_true_word_wins_beyond_noise"] + s["mse_within_noise"] == 1


def test_paired_z_is_the_mean_difference_over_its_standard_error():
    import torch

    diag = load_script("diagnose_visii")
    per_sample = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 2.0, 2.0, 4.0], [2.0, 3.0, 4.0, 5.0]])
    z = diag.paired_z(per_sample, true=0)
    assert z[0] == 0.0
    d = torch.tensor([-1.0, 0.0, -1.0, 0.0])  # candidate 1 minus the true wording
    assert abs(z[1] - float(d.mean() / (d.std() / 2))) < 1e-6 and z[1] < 0
    assert z[2] == float("inf")  # always worse by exactly 1: a zero-variance difference
