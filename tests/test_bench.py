"""`pairedit bench`: config checks before work, resume, corrupt-cache recovery, sharding, the report.

Runs a micro suite (2 directions — the vague drawing kind and a recolour — × 1 test image, every
method, 2 steps of everything) on the tiny random-weight pipelines saved to disk.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import replace
from functools import partial

import pytest

from pairedit import world
from pairedit.bench import METHODS, BenchConfig, Suite, get_suite, make_plan, run_benchmark
from pairedit.bench import run as bench_run
from pairedit.bench.cache import Cache, CorruptEntry
from pairedit.bench.report import CLIP_KEYS, GT_KEYS, aggregate, table1
from pairedit.bench.suite import KINDS, Direction, shard
from pairedit.cli import main
from pairedit.errors import UserError

MICRO = Suite("micro", directions=2, tests=1, visii_steps=2, caption_steps=2, sample_steps=2, sdedit_steps=2,
              pti_steps=2)


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return tiny_bundle


def micro_config(bundle, tmp, **kw) -> BenchConfig:
    kw.setdefault("edits", ["drawing", "recolor"])
    return BenchConfig(suite=MICRO, out=tmp / "report", cache=tmp / "cache", model=str(bundle),
                       command="pairedit bench (test)", **kw)


def clean_scores(records):
    """Scores per unit, without timings (which differ between runs)."""
    return {(r["method"], r["direction"], r["test"]): r["scores"] for r in records}


@pytest.fixture(scope="module")
def first_run(bundle, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    config = micro_config(bundle, tmp)
    plan, records, info = run_benchmark(config, process_index=0, num_processes=1, progress=False)
    return config, plan, records, info


# ----------------------------------------------------------------------------------------------
# Planning: names checked before any work


def test_unknown_method_or_edit_fails_before_any_work(bundle, tmp_path, monkeypatch, capsys):
    def no_models(*a, **k):
        raise AssertionError("models were loaded before the config was checked")

    monkeypatch.setattr(bench_run, "Context", no_models)
    with pytest.raises(UserError, match="'visii-adam'"):
        run_benchmark(micro_config(bundle, tmp_path, methods=["ip2p", "visii-adam"]), 0, 1, progress=False)
    with pytest.raises(UserError, match="'recolour'"):
        run_benchmark(micro_config(bundle, tmp_path, edits=["recolour", "drawing"]), 0, 1, progress=False)
    config = micro_config(bundle, tmp_path, methods=["sdedit"], sd_model=None)
    with pytest.raises(UserError, match="sdedit need a text-to-image model"):
        run_benchmark(config, 0, 1, progress=False)
    assert not (tmp_path / "cache").exists() and not (tmp_path / "report").exists()
    # the command line says the same in one line and exits 2
    code = main(["bench", "--model", str(bundle), "--cache", str(tmp_path / "c"), "--methods", "ip2p,nope*"])
    assert code == 2 and "'nope*'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_plan_directions_cover_every_kind_and_are_stable():
    config = BenchConfig(suite=get_suite("quick"))
    plan = make_plan(config)
    assert [d.kind for d in plan.directions] == list(KINDS)  # the vague drawing kind is its own direction
    drawing = plan.directions[KINDS.index("drawing")]
    assert drawing.edit.type == "drawing" and drawing.target_style in world.DRAWING_STYLES
    for d in plan.directions:
        assert len(d.examples) == 4 and len(d.tests) == 1
        assert all(p.before.split == "test" for p in (*d.examples, *d.tests))
        assert len({p.before.key for p in (*d.examples, *d.tests)}) == 5
    # a larger suite starts with the smaller one's directions (so cached units are shared)
    bigger = make_plan(BenchConfig(suite=replace(get_suite("quick"), directions=12)))
    assert [d.key for d in bigger.directions[:8]] == [d.key for d in plan.directions]
    assert len({d.id for d in bigger.directions}) == 12
    # patterns select methods; the shares of a shard partition the directions
    assert [m.name for m in make_plan(BenchConfig(suite=MICRO, methods=["visii-*-4p-*"])).methods] == \
        ["visii-mseclip-cap-4p-random", "visii-mseclip-cap-4p-fixed"]
    items = list(range(7))
    parts = [shard(items, i, 3) for i in range(3)]
    assert sorted(x for p in parts for x in p) == items


def test_only_style_directions_have_a_target_style():
    # seed 1 of eval_visii's directions drew "add a green triangle" with a watercolour example: an object
    # edit on a drawn scene keeps its style, and scoring it as a style edit failed on its sketch test scene
    rng = random.Random(0)
    drawn = world.random_scene(rng, "test", style="watercolor")
    add = world.make_pair(world.Edit("add", value="triangle:green"), rng, "test", scene=drawn)
    photo = world.random_scene(rng, "test", style="photo")
    style = world.make_pair(world.Edit("style_watercolor"), rng, "test", scene=photo)
    make = partial(Direction, 0, tests=())
    assert add.after.style == "watercolor" and make(add.edit, examples=(add,)).target_style is None
    assert make(style.edit, examples=(style,)).target_style == "watercolor"


def test_cache_records_detect_damage(tmp_path):
    cache = Cache(tmp_path)
    (tmp_path / "out.png").write_bytes(b"png bytes")
    cache.write("r.json", {"key": "k1", "value": 1}, files={"output": "out.png"})
    assert cache.read("r.json", "k1")["value"] == 1
    assert cache.read("missing.json", "k1") is None
    with pytest.raises(CorruptEntry, match="key"):
        cache.read("r.json", "k2")
    (tmp_path / "out.png").write_bytes(b"other bytes")
    with pytest.raises(CorruptEntry, match="does not match"):
        cache.read("r.json", "k1")
    text = (tmp_path / "r.json").read_text()
    (tmp_path / "r.json").write_text(text.replace('"value": 1', '"value": 2'))
    with pytest.raises(CorruptEntry, match="hash mismatch"):
        cache.read("r.json", "k1")
    (tmp_path / "r.json").write_text(text[: len(text) // 2])
    with pytest.raises(CorruptEntry, match="unreadable JSON"):
        cache.read("r.json", "k1")


# ----------------------------------------------------------------------------------------------
# Running


def test_report_has_every_row_and_finding(first_run):
    config, plan, records, info = first_run
    assert len(records) == len(METHODS) * 2 and info.stats.computed == len(records) and info.stats.reused == 0
    assert info.stats.learned == 7 * 2  # random and fixed rows share one learning
    text = (config.out / "benchmark.md").read_text()
    for name in METHODS:
        assert f"`{name}`" in text
    table = text.split("## Table 1 — CLIP similarities")[1].split("##")[0]
    assert len(re.findall(r"^\| (?:\d)? \|", table, flags=re.M)) == 11  # 4 baselines + 7 VISII rows
    for claim in ("CLIP loss raises", "Caption init beats", "Fixed noise raises", "More pairs raise"):
        assert re.search(claim + r".*\*\*(held|not held|not measurable)\*\*", text)
    assert "FID" not in text
    for label in ("CLIP image sim.", "CLIP directional sim.", "Visual CLIP sim.", "PSNR (dB)", "SSIM", "Edit success",
                  "Style accuracy"):
        assert label in text
    assert "2 edit directions" in text and "2 learning steps" in text and "pairedit 0.1.0" in text
    for png in ("fig7_clip_histograms.png", "gt_histograms.png", "examples.png"):
        assert (config.out / "benchmark" / png).stat().st_size > 1000 and f"benchmark/{png}" in text
    results = json.loads((config.out / "benchmark" / "results.json").read_text())
    assert results["suite"]["visii_steps"] == 2 and results["sizes"]["test_images"] == 2
    drawing = [r for r in records if r["kind"] == "drawing"]
    assert drawing and all(r["scores"]["nearest_style"] in (*world.DRAWING_STYLES, "none") for r in drawing)


def test_rerun_skips_finished_work_and_recomputes_corrupt_entries(first_run, bundle):
    config, plan, records, _ = first_run
    (config.out / "benchmark.md").unlink()
    _, again, info = run_benchmark(config, 0, 1, progress=False)
    assert info.stats.computed == 0 and info.stats.reused == len(records) and info.stats.learned == 0
    assert (config.out / "benchmark.md").exists()
    assert clean_scores(again) == clean_scores(records)
    # damage three entries: truncated JSON, an edited score (hash mismatch), a deleted output PNG
    by_method = {r["method"]: r for r in again if r["test"] == 0 and r["direction"].startswith("d001")}
    units = config.cache / "units"
    truncated = next(units.rglob(f"{by_method['ip2p']['direction']}/ip2p/*.json"))
    truncated.write_text(truncated.read_text()[:40])
    edited = next(units.rglob(f"{by_method['sdedit']['direction']}/sdedit/*.json"))
    rec = json.loads(edited.read_text())
    rec["scores"]["psnr"] = 99.0
    edited.write_text(json.dumps(rec))
    png = next(units.rglob(f"{by_method['visii-mse-gt-1p-fixed']['direction']}/visii-mse-gt-1p-fixed/*.png"))
    png.unlink()
    _, third, info = run_benchmark(config, 0, 1, progress=False)
    assert info.stats.corrupt == 3 and info.stats.computed == 3 and info.stats.learned == 0
    assert clean_scores(third) == clean_scores(records)


def test_a_new_vae_decoder_reruns_the_units_it_shapes(bundle, tmp_path):
    import shutil

    from diffusers import AutoencoderKL

    other = tmp_path / "bundle"
    shutil.copytree(bundle, other)
    vae = AutoencoderKL.from_pretrained(other / "ip2p" / "vae")
    vae.decoder.conv_out.bias.data += 0.1  # what `train vae-decoder` + `export --vae-only` change
    vae.save_pretrained(other / "ip2p" / "vae")
    config = micro_config(bundle, tmp_path, methods=["ip2p"], edits=["recolor"])
    _, first, info = run_benchmark(config, 0, 1, progress=False)
    assert info.stats.computed == len(first) > 0
    _, second, info = run_benchmark(replace(config, model=str(other)), 0, 1, progress=False)
    assert info.stats.computed == len(first) and info.stats.reused == 0  # not the old decoder's results
    assert clean_scores(second) != clean_scores(first)
    _, _, info = run_benchmark(replace(config, model=str(other)), 0, 1, progress=False)
    assert info.stats.reused == len(first)


def test_killed_run_resumes_where_it_stopped(bundle, tmp_path, monkeypatch):
    config = micro_config(bundle, tmp_path, methods=["ip2p", "visii-mse-gt-1p-*"])
    total = 3 * 2
    original = bench_run.Context.compute_unit
    done = []

    def dies_after_four(self, unit):
        if len(done) == 4:
            raise KeyboardInterrupt
        done.append(unit)
        return original(self, unit)

    monkeypatch.setattr(bench_run.Context, "compute_unit", dies_after_four)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(config, 0, 1, progress=False)
    assert not (config.out / "benchmark.md").exists()
    monkeypatch.setattr(bench_run.Context, "compute_unit", original)
    _, records, info = run_benchmark(config, 0, 1, progress=False)
    assert info.stats.reused == 4 and info.stats.computed == total - 4 and len(records) == total


def test_two_processes_give_the_same_table_as_one(first_run, tmp_path):
    config, plan, records, _ = first_run
    sharded = replace(config, out=tmp_path / "report", cache=tmp_path / "cache")
    # process 1 runs its share and leaves; process 0 runs its share, finds all units, aggregates
    _, none, info1 = run_benchmark(sharded, process_index=1, num_processes=2, progress=False)
    assert none is None and info1.stats.computed == len(records) // 2
    assert not (sharded.out / "benchmark.md").exists()
    _, merged, info0 = run_benchmark(sharded, process_index=0, num_processes=2, progress=False)
    assert info0.stats.computed == len(records) // 2
    assert clean_scores(merged) == clean_scores(records)
    keys = (*CLIP_KEYS, *GT_KEYS)
    assert table1(plan, aggregate(merged), keys) == table1(plan, aggregate(records), keys)
    one = (config.out / "benchmark.md").read_text().split("## Table 1 — CLIP similarities")[1].split("## Table 1,")[0]
    two = (sharded.out / "benchmark.md").read_text().split("## Table 1 — CLIP similarities")[1].split("## Table 1,")[0]
    assert one == two


def test_cli_quick_suite_end_to_end(bundle, tmp_path, capsys):
    """`pairedit bench --suite quick` on the tiny models (one direction, 2 learning steps, to stay fast)."""
    out, cache = tmp_path / "docs", tmp_path / "cache"
    args = ["bench", "--suite", "quick", "--model", str(bundle), "--out", str(out), "--cache", str(cache),
            "--directions", "1", "--visii-steps", "2", "--no-progress"]
    assert main(args) == 0
    assert f"{len(METHODS)} units ({len(METHODS)} computed" in capsys.readouterr().out
    text = (out / "benchmark.md").read_text()
    assert "Suite **quick**" in text and "--directions 1 --visii-steps 2" in text
    assert main([*args]) == 0
    assert f"(0 computed, {len(METHODS)} reused" in capsys.readouterr().out


def test_result_keys_follow_the_method_defaults():
    """A cached VISII or PTI result depends on its config's defaults (e.g. VISII's loss_on), so they are keyed."""
    from dataclasses import asdict

    from pairedit.inversion import PTIConfig
    from pairedit.visii import VisiiConfig

    assert METHODS["visii-mseclip-cap-1p-fixed"].defaults() == asdict(VisiiConfig())
    assert METHODS["pti"].defaults() == asdict(PTIConfig())
    assert METHODS["ip2p"].defaults() == {}


def test_a_finding_within_two_standard_errors_is_not_measurable():
    from pairedit.bench import report

    def records(gains):
        return [r for t, g in enumerate(gains) for r in (
            {"method": "ip2p-caption", "direction": "d", "test": t, "scores": {"psnr": 20.0}},
            {"method": "ip2p", "direction": "d", "test": t, "scores": {"psnr": 20.0 + g}})]

    finding = report.Finding("ip2p beats ip2p-caption", "test", (("ip2p-caption", "ip2p"),), ("psnr",))
    assert report.check_finding(finding, records([1.0, 1.1, 0.9, 1.0]))["verdict"] == "held"
    assert report.check_finding(finding, records([-1.0, -1.1, -0.9, -1.0]))["verdict"] == "not held"
    assert report.check_finding(finding, records([1.0, -0.9, 0.2, -0.1]))["verdict"] == "not measurable"
