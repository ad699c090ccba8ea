"""VISII learning and applying on tiny random-weight models (code paths), and on the bundled
models (behaviour; skipped until they are built)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import requires_bundled
from pairedit import visii, world
from pairedit.errors import UserError
from pairedit.sampling import encode_text

INIT = "make it a watercolor painting"


@pytest.fixture(scope="module")
def pairs():
    """Watercolor pairs from held-out scenes (64×64; learning fits them to the tiny model's 32×32)."""
    return [p.images() for p in world.direction_pairs(world.Edit("style_watercolor"), 3, seed=0)]


def _learn(tiny, pairs, steps=3, **kw):
    config = visii.VisiiConfig(steps=steps, **kw.pop("config", {}))
    return visii.learn(tiny.ip2p, tiny.clip, tiny.processor, pairs, config, init_text=kw.pop("init_text", INIT),
                       progress=False, **kw)


def test_only_the_ins_span_changes(tiny, pairs):
    inst = _learn(tiny, pairs[:1], steps=3, config=dict(lr=0.05))
    base = encode_text(tiny.ip2p, INIT)
    _, start, end = visii.ins_span(tiny.ip2p, INIT)
    assert (inst.start, inst.end) == (start, end) == (1, end)
    assert torch.equal(inst.cond[:, :start], base[:, :start])  # start-of-text frozen
    assert torch.equal(inst.cond[:, end:], base[:, end:])  # end-of-text and padding frozen
    assert not torch.allclose(inst.cond[:, start:end], base[:, start:end])  # <ins> learned
    assert len(inst.losses) == 3 and all(np.isfinite(inst.losses))


def test_learning_leaves_models_untouched(tiny, pairs):
    unet_before = {k: v.clone() for k, v in tiny.ip2p.unet.state_dict().items()}
    flags = [p.requires_grad for p in tiny.ip2p.unet.parameters()]
    _learn(tiny, pairs[:1], steps=2)
    assert flags == [p.requires_grad for p in tiny.ip2p.unet.parameters()]
    assert all(torch.equal(v, tiny.ip2p.unet.state_dict()[k]) for k, v in unet_before.items())
    assert all(p.grad is None for p in tiny.ip2p.unet.parameters())


def test_pez_caption_initialises(tiny, pairs):
    inst = _learn(tiny, pairs[:1], steps=1, init_text=None, config=dict(init="caption", caption_steps=10,
                                                                      caption_tokens=4))
    assert isinstance(inst.init_text, str) and inst.init_text
    assert inst.end > inst.start == 1


def test_search_initialises_deterministically(tiny, pairs):
    config = dict(init="search", search_steps=12, search_score_samples=3, search_tokens=3)
    a = _learn(tiny, pairs[:1], steps=1, init_text=None, config=config)
    b = _learn(tiny, pairs[:1], steps=1, init_text=None, config=config)
    assert isinstance(a.init_text, str) and a.init_text and a.init_text == b.init_text
    assert a.config["init"] == "search" and a.end > a.start == 1


def test_bank_init_picks_the_lowest_mse_instruction(tiny, pairs):
    """init="bank" returns the candidate with the lowest Eq. 2 MSE on the fixed samples, computed here directly."""
    from diffusers import DDPMScheduler

    from pairedit.images import to_tensor
    from pairedit.sampling import encode_image_condition

    pipe = tiny.ip2p
    bank = ["make it a watercolor painting", "turn the circle red", "add a blue star", "make it night"]
    config = visii.VisiiConfig(init="bank", bank_screen_samples=2, bank_keep=4, bank_rank_samples=3)
    befores, afters = visii._prepare_pairs(pairs[:1], visii.model_resolution(pipe))
    z_x = [encode_image_condition(pipe, to_tensor(befores[0]))]
    z_y = [encode_image_condition(pipe, to_tensor(afters[0])) * pipe.vae.config.scaling_factor]
    chosen = visii.bank_instruction(pipe, z_x, z_y, bank, config)

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    g = torch.Generator().manual_seed(config.seed + 1)
    torch.randn((2, *z_y[0].shape[1:]), generator=g)  # the screen's draw comes first
    t, eps = torch.linspace(0, 999, 3).long(), torch.randn((3, *z_y[0].shape[1:]), generator=g)
    x_in = torch.cat([sched.add_noise(z_y[0].expand(3, -1, -1, -1), eps, t), z_x[0].expand(3, -1, -1, -1)], 1)
    with torch.no_grad():
        mse = [float((pipe.unet(x_in, t, encoder_hidden_states=encode_text(pipe, b).expand(3, -1, -1)).sample
                      - eps).pow(2).mean()) for b in bank]
    assert chosen == bank[int(np.argmin(mse))]
    inst = _learn(tiny, pairs[:1], steps=1, init_text=None, bank=bank,
                  config=dict(init="bank", bank_screen_samples=2, bank_keep=2, bank_rank_samples=3))
    assert inst.init_text in bank and inst.config["init"] == "bank"
    with pytest.raises(UserError, match="empty"):
        visii.bank_instruction(pipe, z_x, z_y, [], config)



def _encoded(pipe, pairs):
    befores, afters = visii._prepare_pairs(pairs, visii.model_resolution(pipe))
    return visii.encode_pairs(pipe, befores, afters)


def test_substitutes_share_both_neighbours():
    bank = ["turn the circle red", "turn the star blue", "make the star red", "make it night"]
    assert visii.substitutes("turn the circle blue", bank) == [["make"], [], ["star"], ["red"]]
    assert visii.substitutes("make it red", bank) == [[], [], ["night"]]  # the ends count as neighbours


def test_instruction_mse_per_sample_rows_average_to_the_scores(tiny, pairs):
    """Per-sample terms (for paired statistics between texts) are the same draws the scores average."""
    pipe = tiny.ip2p
    z_x, z_y = _encoded(pipe, pairs[:2])
    texts = ["make it red", "make it blue", "turn the circle red"]
    scores = visii.instruction_mse(pipe, z_x, z_y, texts, 3, torch.Generator().manual_seed(1))
    samples = visii.instruction_mse(pipe, z_x, z_y, texts, 3, torch.Generator().manual_seed(1), per_sample=True)
    assert samples.shape == (3, 2 * 3) and (samples >= 0).all()
    assert torch.allclose(samples.mean(1), scores, rtol=1e-5)


def test_swap_words_keeps_only_swaps_that_lower_the_mse(tiny, pairs):
    """One candidate swap: taken exactly when it scores lower on the rank's draws. More: the text comes back no
    worse than it went in on those draws, each word either kept or one of its substitutes."""
    pipe = tiny.ip2p
    z_x, z_y = _encoded(pipe, pairs[:1])
    config = visii.VisiiConfig(bank_screen_samples=2, bank_keep=3, bank_rank_samples=3)

    def rank_scores(texts, seed, screened):  # the rank's draws come after the screen's (which do not depend on texts)
        g = torch.Generator().manual_seed(seed)
        if screened:
            visii.instruction_mse(pipe, z_x, z_y, ["x"], config.bank_screen_samples, g)
        return visii.instruction_mse(pipe, z_x, z_y, texts, config.bank_rank_samples, g).tolist()

    bank = ["make it red", "make it blue"]
    out = visii.swap_words(pipe, z_x, z_y, "make it red", bank, config, torch.Generator().manual_seed(5))
    red, blue = rank_scores(["make it red", "make it blue"], 5, screened=False)
    assert out == ("make it blue" if blue < red else "make it red")

    bank = [f"{v} the {s} {c}" for v in ("turn", "paint") for s in ("circle", "star", "ring") for c in ("red", "blue")]
    text = "turn the circle red"
    out = visii.swap_words(pipe, z_x, z_y, text, bank, config, torch.Generator().manual_seed(6))
    subs = visii.substitutes(text, bank)
    assert len(out.split()) == 4 and all(o == w or o in ws for o, w, ws in zip(out.split(), text.split(), subs))
    before, after = rank_scores([text, out], 6, screened=True)  # 5 swaps > bank_keep: screened
    assert after < before if out != text else after == before
    assert visii.swap_words(pipe, z_x, z_y, "make it red", ["make it red"], config, torch.Generator()) == "make it red"


def test_bank_swap_records_the_trace_and_learns_as_from_its_text(tiny, pairs):
    """init="bank" with bank_swap_words: init_trace is [bank pick, after swaps], the learning starts from the last,
    and learning from that text given as init_text gives the same instruction (compare_inits.py relies on it)."""
    bank = ["make it a watercolor painting", "turn the circle red", "add a blue star", "make it night"]
    config = dict(init="bank", bank_swap_words=True, bank_screen_samples=1, bank_keep=3, bank_rank_samples=2)
    inst = _learn(tiny, pairs[:1], steps=2, init_text=None, bank=bank, config=config)
    assert len(inst.init_trace) == 2 and inst.init_trace[0] in bank and inst.init_text == inst.init_trace[1]
    assert inst.config["bank_swap_words"] is True
    again = _learn(tiny, pairs[:1], steps=2, init_text=inst.init_text, config=config)
    assert torch.equal(again.cond, inst.cond) and again.init_trace == []


def test_outcome_instruction_keeps_the_text_whose_edits_come_nearest(tiny, pairs):
    """The pick is the lowest mean pixel MSE of the texts' edits to the afters (over pairs and seeds), each score
    what ip2p_edit gives with the config's seeds and guidance; the first text wins a tie."""
    from pairedit.editing import ip2p_edit
    from pairedit.images import fit
    from pairedit.metrics import mse

    pipe = tiny.ip2p
    res = visii.model_resolution(pipe)
    befores, afters = ([fit(im, res) for im in ims] for ims in zip(*pairs[:2]))
    config = visii.VisiiConfig(bank_outcome_seeds=2, seed=3)
    texts = ["make it red", "make it a watercolor painting", "make it red"]
    best, scores = visii.outcome_instruction(pipe, befores, afters, texts, config)
    want = [np.mean([mse(o, a) for s in (3, 4) for o, a in zip(ip2p_edit(pipe, befores, t, seed=s), afters)])
            for t in texts[:2]]
    assert scores[:2] == pytest.approx(want) and scores[2] == scores[0]
    assert best == texts[int(np.argmin(scores))]
    assert visii.outcome_instruction(pipe, befores, afters, ["a", "a"], config)[0] == "a"
    assert visii.one_word_swaps("make it red", ["make it red", "make it blue", "turn it red"]) == [
        "turn it red", "make it blue"]
    with pytest.raises(UserError):
        visii.VisiiConfig(bank_outcome_seeds=-1)


def test_bank_outcome_records_the_trace(tiny, pairs):
    """init="bank" with bank_outcome_seeds: init_trace is [bank pick, outcome pick], the learning starts from the
    last, and the outcome pick is the pick or one of its one-word swaps."""
    bank = ["make it a watercolor painting", "make it a sketch painting", "turn the circle red", "make it night"]
    config = dict(init="bank", bank_outcome_seeds=1, bank_screen_samples=1, bank_keep=3, bank_rank_samples=2)
    inst = _learn(tiny, pairs[:1], steps=2, init_text=None, bank=bank, config=config)
    assert len(inst.init_trace) == 2 and inst.init_trace[0] in bank and inst.init_text == inst.init_trace[1]
    assert inst.init_text in [inst.init_trace[0], *visii.one_word_swaps(inst.init_trace[0], bank)]


def test_bank_without_a_file_is_a_user_error(tiny, pairs, tmp_path):
    from pairedit.models import instruction_bank

    with pytest.raises(UserError, match="instructions.txt"):
        instruction_bank(str(tmp_path))
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(UserError, match="empty"):
        instruction_bank("bundled", tmp_path / "empty.txt")
    (tmp_path / "bank.txt").write_text("make it night\nmake it night\n turn the circle red \n")
    assert instruction_bank("bundled", tmp_path / "bank.txt") == ["make it night", "turn the circle red"]


@requires_bundled
def test_bundled_bank_is_every_instruction_of_the_world():
    """The shipped instructions.txt is world.all_instructions(): the training wordings and those of the held-out
    (edit, shape) combinations, which world.training_instructions() leaves out."""
    from pairedit.models import instruction_bank

    bank = instruction_bank("bundled")
    assert bank == world.all_instructions()
    heldout = {world.Edit(et, s).instruction(wording=k) for et, spec in world.EDIT_TYPES.items() if spec.needs_target
               for s in world.SHAPES if not world.replaces_with_itself(et, s) and world.is_heldout_combo(world.Edit(et, s))
               for k in range(len(spec.wordings))}
    training = set(world.training_instructions())
    assert "remove the square" in heldout and set(bank) - training == heldout and training < set(bank)


def test_pez_optimize_returns_the_best_scored_prompt(tiny):
    from pairedit.pez import pez_optimize

    enc, tok = tiny.ip2p.text_encoder, tiny.ip2p.tokenizer
    scored = {}

    def score(ids):  # an arbitrary but fixed score per prompt, recorded
        key = tuple(ids[0, 1:4].tolist())
        scored[key] = (sum(key) * 7919) % 101
        return scored[key]

    text = pez_optimize(enc.get_input_embeddings(), tok, lambda ids: enc(ids)[0].pow(2).mean(), length=16,
                        n_tokens=3, steps=40, lr=0.5, score_fn=score, score_every=2)
    assert len(scored) > 1  # the search moved
    best = min(scored, key=scored.get)
    assert text == tok.decode(list(best), skip_special_tokens=True).strip()


@requires_bundled
def test_word_tokens_are_whole_words():
    from pairedit.models import load_clip
    from pairedit.pez import word_tokens_mask

    tok = load_clip("bundled")[1].tokenizer
    mask = word_tokens_mask(tok, len(tok))
    words = [tok.decode([i]).strip() for i in mask.nonzero().squeeze(1).tolist()]
    assert {"circle", "red", "smaller", "remove"} <= set(words)
    assert all(w.isalpha() and len(w) >= 2 for w in words)
    assert tok("remove the red circle").input_ids[1:-1] == [tok.convert_tokens_to_ids(w + "</w>")
                                                           for w in "remove the red circle".split()]


def test_config_rejects_unknown_init():
    with pytest.raises(UserError, match="init"):
        visii.VisiiConfig(init="clip")


def test_noise_table_one_noise_per_timestep(tiny, pairs):
    inst = _learn(tiny, pairs, steps=5)
    ts = inst.noise_timesteps
    assert ts.dtype == torch.int64 and len(ts) == len(set(ts.tolist())) <= 5
    assert torch.equal(ts, ts.sort().values) and int(ts.min()) >= 0 and int(ts.max()) < 1000
    assert inst.noise_table.shape == (len(ts), 4, 16, 16)


def test_learning_is_deterministic_per_seed(tiny, pairs):
    a, b = _learn(tiny, pairs, steps=2), _learn(tiny, pairs, steps=2)
    c = _learn(tiny, pairs, steps=2, config=dict(seed=1))
    assert torch.equal(a.cond, b.cond) and torch.equal(a.noise_table, b.noise_table)
    assert not torch.equal(a.noise_timesteps, c.noise_timesteps) or not torch.equal(a.noise_table, c.noise_table)


def test_resume_equivalence(tiny, pairs, tmp_path):
    straight = _learn(tiny, pairs, steps=6, config=dict(lr=0.01))
    ckpt = tmp_path / "edit.ckpt.safetensors"

    def interrupt(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _learn(tiny, pairs, steps=6, config=dict(lr=0.01), checkpoint=ckpt, callback=interrupt)
    assert ckpt.exists()
    # The resumed run takes its settings from the checkpoint (a different lr here is ignored).
    resumed = _learn(tiny, pairs, steps=6, config=dict(lr=0.5), resume=ckpt)
    assert torch.allclose(straight.cond, resumed.cond, atol=1e-6)
    assert torch.equal(straight.noise_timesteps, resumed.noise_timesteps)
    assert torch.equal(straight.noise_table, resumed.noise_table)
    assert np.allclose(straight.losses, resumed.losses)


def test_auto_steps_are_fewer_from_a_bank_pick(tiny, pairs, tmp_path, monkeypatch):
    """steps=None: BANK_STEPS when c_T starts from the bank's pick, else the paper's N; recorded in the config, and a
    resumed bank run keeps its N."""
    monkeypatch.setattr(visii, "BANK_STEPS", 2)
    monkeypatch.setattr(visii, "PAPER_STEPS", 5)
    assert visii.VisiiConfig().steps is None and visii.DEFAULT_NOISE == "random"
    bank = ["make it a watercolor painting", "turn the circle red"]
    fast = dict(init="bank", bank_screen_samples=2, bank_keep=2, bank_rank_samples=2)
    from_bank = _learn(tiny, pairs[:1], steps=None, init_text=None, bank=bank, config=fast)
    assert from_bank.config["steps"] == 2 and len(from_bank.losses) == 2
    from_words = _learn(tiny, pairs[:1], steps=None)
    assert from_words.config["steps"] == 5 and len(from_words.losses) == 5
    ckpt = tmp_path / "bank.ckpt.safetensors"

    def interrupt(step, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _learn(tiny, pairs[:1], steps=None, init_text=None, bank=bank, config=fast, checkpoint=ckpt, callback=interrupt)
    resumed = _learn(tiny, pairs[:1], steps=None, init_text=None, config=fast, resume=ckpt)
    assert resumed.config["steps"] == 2 and torch.allclose(resumed.cond, from_bank.cond, atol=1e-6)


def test_resume_refuses_other_pairs(tiny, pairs, tmp_path):
    ckpt = tmp_path / "c.safetensors"

    def interrupt(step, loss):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _learn(tiny, pairs[:1], steps=3, checkpoint=ckpt, callback=interrupt)
    with pytest.raises(UserError, match="other example images"):
        _learn(tiny, pairs[1:2], steps=3, resume=ckpt)


def _count_unet_calls(unet):
    calls = []
    handle = unet.register_forward_hook(lambda m, i, o: calls.append((torch.is_grad_enabled(), o.sample.requires_grad)))
    return calls, handle


@pytest.mark.parametrize("loss_on, expected", [("conditional", [(True, True)]),
                                               ("guided", [(True, True), (False, False)])])
def test_unet_calls_with_grad(tiny, pairs, loss_on, expected):
    """Only the instruction-dependent branch runs with grad; (c_I, ∅) and (∅, ∅) under no_grad."""
    calls, handle = _count_unet_calls(tiny.ip2p.unet)
    try:
        inst = _learn(tiny, pairs[:1], steps=2, config=dict(loss_on=loss_on))
    finally:
        handle.remove()
    assert calls == expected * 2
    assert inst.config["loss_on"] == loss_on


def test_nan_loss_stops_with_user_error(tiny, pairs):
    with pytest.raises(UserError, match="loss became nan"):
        _learn(tiny, pairs[:1], steps=2, config=dict(lambda_mse=float("nan")))


def test_clip_width_mismatch_names_both_models(tiny):
    from types import SimpleNamespace

    other = SimpleNamespace(text_projection=torch.nn.Linear(16, 8))
    with pytest.raises(UserError, match="'my-clip'.*'my-model'"):
        visii.check_clip(tiny.ip2p, other, "my-model", "my-clip")


def test_config_rejects_unknown_loss():
    with pytest.raises(UserError):
        visii.VisiiConfig(loss_on="both")


@pytest.fixture(scope="module")
def learned(tiny, pairs):
    return visii.learn(tiny.ip2p, tiny.clip, tiny.processor, pairs[:1], visii.VisiiConfig(steps=4), init_text=INIT,
                       progress=False)


def _arrays(images):
    return [np.asarray(im, dtype=np.int16) for im in images]


def test_fixed_noise_apply_is_deterministic(tiny, pairs, learned):
    tests = [pairs[1][0], pairs[2][0]]
    a = visii.apply(tiny.ip2p, learned, tests, noise="fixed", steps=4, seed=0)
    b = visii.apply(tiny.ip2p, learned, tests, noise="fixed", steps=4, seed=123)  # seed is unused with fixed noise
    assert len(a) == 2 and a[0].size == (32, 32)
    assert all(np.array_equal(x, y) for x, y in zip(_arrays(a), _arrays(b)))


def test_random_noise_depends_on_seed(tiny, pairs, learned):
    tests = [pairs[1][0]]
    a = visii.apply(tiny.ip2p, learned, tests, noise="random", seed=0, steps=4)
    a2 = visii.apply(tiny.ip2p, learned, tests, noise="random", seed=0, steps=4)
    b = visii.apply(tiny.ip2p, learned, tests, noise="random", seed=1, steps=4)
    assert np.array_equal(_arrays(a)[0], _arrays(a2)[0])
    assert not np.array_equal(_arrays(a)[0], _arrays(b)[0])


def test_hybrid_conditioning_layout(tiny, learned):
    words = "make it red"
    cond = visii.hybrid_conditioning(tiny.ip2p, learned, words)
    full = encode_text(tiny.ip2p, f"{INIT} {words}")
    s, e = learned.start, learned.end
    assert torch.equal(cond[:, :s], full[:, :s])
    assert torch.equal(cond[:, s:e], learned.span)  # the learned <ins> tokens
    assert torch.equal(cond[:, e:], full[:, e:])  # then the prompt's tokens, end-of-text, padding
    assert not torch.equal(cond, learned.cond)
    assert torch.equal(visii.hybrid_conditioning(tiny.ip2p, learned, "  "), learned.cond)


def test_hybrid_apply_runs_and_differs(tiny, pairs, learned):
    plain = visii.apply(tiny.ip2p, learned, [pairs[1][0]], steps=3)
    hybrid = visii.apply(tiny.ip2p, learned, [pairs[1][0]], prompt="make it red", steps=3)
    assert hybrid[0].size == plain[0].size
    assert not np.array_equal(_arrays(plain)[0], _arrays(hybrid)[0])


def test_fixed_noise_refuses_other_aspect_ratio(tiny, learned):
    from PIL import Image

    wide = Image.new("RGB", (64, 32), "white")
    with pytest.raises(UserError, match="--noise random"):
        visii.apply(tiny.ip2p, learned, [wide], noise="fixed", steps=2)
    assert visii.apply(tiny.ip2p, learned, [wide], noise="random", steps=2)[0].size == (64, 32)


# ----------------------------------------------------------------------------------------------
# Behaviour on the bundled models


@requires_bundled
def test_bundled_learning_moves_toward_true_after():
    """A short learn lowers the loss, and the learned edit moves held-out test images toward their true after.

    It starts from the example's written instruction: with the bundled InstructPix2Pix UNet (4,410 steps
    in session 2), 100 steps from a 100-step PEZ caption or from the vague "turn it into a drawing" did
    not get there (session-2 notes); docs/visii.md measures the full 1,000-step caption-initialised runs.
    """
    from pairedit.images import fit, to_tensor
    from pairedit.models import load_clip, load_ip2p

    pipe = load_ip2p("bundled")
    clip, processor = load_clip("bundled")
    (b, a), tests, _ = visii.example_files()
    from pairedit.images import load_image

    example = (load_image(b), load_image(a))
    inst = visii.learn(pipe, clip, processor, [example], visii.VisiiConfig(steps=100),
                       init_text="make it a watercolor painting", progress=False)
    losses = np.array(inst.losses)
    assert losses[-20:].mean() < losses[:20].mean()

    res = inst.resolution

    def mse(im, ref):
        return float(((to_tensor(fit(im, res)) - to_tensor(fit(ref, res))) ** 2).mean())

    for test_before, test_after in ((load_image(p) for p in pair) for pair in tests):
        out = visii.apply(pipe, inst, [test_before])[0]
        assert mse(out, test_after) < mse(test_before, test_after)


@requires_bundled
def test_bundled_outcome_prefers_the_true_colour():
    """On a held-out recolour example, the bundled model's edit with the true colour word comes nearer the
    after-image than with another colour (the outcome score can tell what was done)."""
    from pairedit.images import fit
    from pairedit.models import load_ip2p

    pipe = load_ip2p("bundled")
    res = visii.model_resolution(pipe)
    b, a = (fit(im, res) for im in world.direction_pairs(world.Edit("recolor_red", "circle"), 1, seed=0)[0].images())
    texts = ["make the circle blue", "make the circle red"]
    best, scores = visii.outcome_instruction(pipe, [b], [a], texts, visii.VisiiConfig(bank_outcome_seeds=1))
    assert best == "make the circle red", scores
