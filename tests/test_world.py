import random

import numpy as np
import pytest

from pairedit import world
from pairedit.world import EDIT_TYPES, Edit, EditNotApplicable, Obj, Scene, WorldError, apply_edit, render


def test_catalogue_size_and_wordings():
    assert len(EDIT_TYPES) >= 25
    assert {spec.category for spec in EDIT_TYPES.values()} == set(world.CATEGORIES)
    assert all(len(spec.wordings) >= 3 for spec in EDIT_TYPES.values())
    assert len(world.SHAPES) >= 6 and len(world.COLORS) >= 8 and len(world.SIZES) == 3
    assert len(world.BACKGROUNDS) >= 4 and len(world.DRAWING_STYLES) >= 3


def test_deterministic_per_seed():
    a = [world.random_pair(random.Random(5)) for _ in range(3)]
    b = [world.random_pair(random.Random(5)) for _ in range(3)]
    assert a == b
    for pa, pb in zip(a, b):
        for ia, ib in zip(pa.images(), pb.images()):
            assert np.array_equal(np.asarray(ia), np.asarray(ib))
    c = world.random_pair(random.Random(6))
    assert c != a[0]


def test_edits_are_exact():
    scene = Scene("plain", (Obj("circle", "blue", "medium", 0.3, 0.3), Obj("star", "red", "small", 0.7, 0.7)))
    after = apply_edit(scene, Edit("recolor_green", target="circle"))
    assert after.objects[0].color == "green" and after.objects[1] == scene.objects[1]
    assert after.caption == "a photo of a medium green circle and a small red star on a plain background"
    # the after-image differs from the before-image only inside the circle's mask
    diff = np.abs(np.asarray(render(after), float) - np.asarray(render(scene), float)).sum(axis=2) > 0
    mask = world.object_masks(scene)[0]
    assert diff.any() and not (diff & ~np.pad(mask, 1)[1:-1, 1:-1] & ~_dilate(mask)).any()
    assert apply_edit(scene, Edit("remove", target="star")).objects == scene.objects[:1]
    assert apply_edit(scene, Edit("drawing", value="ink")).style == "ink"


def _dilate(m):
    out = m.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            out |= np.roll(np.roll(m, dy, 0), dx, 1)
    return out


def test_bad_input_is_named():
    with pytest.raises(WorldError, match="unknown shape 'blob'"):
        Obj("blob", "red", "small", 0.5, 0.5)
    scene = Scene("plain", (Obj("circle", "blue", "medium", 0.3, 0.3),))
    with pytest.raises(EditNotApplicable, match="no star"):
        apply_edit(scene, Edit("remove", target="star"))
    with pytest.raises(WorldError, match="unknown edit type"):
        Edit("explode")


def test_splits_are_disjoint_and_fixed():
    rng = random.Random(0)
    test_scenes = [world.random_scene(rng, "test") for _ in range(50)]
    assert all(s.split == "test" for s in test_scenes)
    train_pairs = [world.random_pair(rng, "train") for _ in range(300)]
    assert all(p.before.split == "train" and not world.is_heldout_combo(p.edit) for p in train_pairs)
    heldout = [Edit(t, target=s) for t, spec in EDIT_TYPES.items() if spec.needs_target for s in world.SHAPES
               if world.is_heldout_combo(Edit(t, target=s))]
    assert 0.08 < len(heldout) / sum(len(world.SHAPES) for s in EDIT_TYPES.values() if s.needs_target) < 0.25


def test_direction_pairs_share_the_edit():
    edit = Edit("recolor_red", target="square")
    pairs = world.direction_pairs(edit, 4, seed=1)
    assert len({p.before.key for p in pairs}) == 4
    assert all(p.edit == edit and p.before.split == "test" for p in pairs)


def test_sampled_pairs_change_the_image():
    rng = random.Random(3)
    for _ in range(60):
        pair = world.random_pair(rng, "test")
        assert world.changes_image(pair.before, pair.after)
    ink = Scene("plain", (Obj("circle", "blue", "medium", 0.5, 0.5),), style="ink")
    assert not world.changes_image(ink, apply_edit(ink, Edit("recolor_red", target="circle")))


def test_binding_pairs_name_one_object_of_a_busy_scene():
    rng = random.Random(4)
    pairs = [world.binding_pair(rng, "train") for _ in range(80)]
    assert all(len(p.before.objects) in (2, 3) and p.edit.target in {o.shape for o in p.before.objects}
               for p in pairs)
    assert {p.edit.category for p in pairs} == set(world.TARGETED_CATEGORIES)
    assert all(not world.is_heldout_combo(p.edit) and p.before.split == "train" for p in pairs)
    assert all(world.changes_image(p.before, p.after) for p in pairs)
    held = world.binding_pair(random.Random(4), "test")
    assert held.before.split == "test" and world.is_heldout_combo(held.edit)
    with pytest.raises(WorldError, match="1 to 3 objects"):
        world.scene_for(Edit("remove", target="star"), rng, n_objects=(4,))


def test_binding_twins_aim_one_edit_at_two_objects_of_one_scene():
    rng = random.Random(6)
    twins = [world.binding_twins(rng, "train") for _ in range(60)]
    for a, b in twins:
        assert a.before == b.before and len(a.before.objects) in (2, 3) and a.before.split == "train"
        assert (a.edit.type, a.edit.value) == (b.edit.type, b.edit.value) and a.edit.target != b.edit.target
        assert {a.edit.target, b.edit.target} <= {o.shape for o in a.before.objects}
        assert not world.is_heldout_combo(a.edit) and not world.is_heldout_combo(b.edit)
        assert a.after == apply_edit(a.before, a.edit) and b.after == apply_edit(b.before, b.edit)
        assert world.changes_image(a.after, b.after)  # the two truths differ where the named objects are
        # worded alike: the instructions differ only in the shape word
        assert a.instruction.replace(a.edit.target, b.edit.target) == b.instruction
    assert {a.edit.category for a, _ in twins} == set(world.TARGETED_CATEGORIES)
    a, b = world.binding_twins(random.Random(6), "test")
    assert a.before.split == "test" and world.is_heldout_combo(a.edit) and world.is_heldout_combo(b.edit)


def test_compound_pairs_show_both_edits_and_word_them_in_one_sentence():
    rng = random.Random(5)
    pairs = [world.compound_pair(rng, "train") for _ in range(60)]
    again = random.Random(5)
    assert [p.edit for p in pairs] == [world.compound_pair(again, "train").edit for _ in range(60)]  # deterministic
    for p in pairs:
        first, second = p.edit.first, p.edit.second
        assert (first.category in world.SCENE_WIDE_CATEGORIES) != (second.category in world.SCENE_WIDE_CATEGORIES)
        assert p.after == apply_edit(apply_edit(p.before, first), second) == apply_edit(apply_edit(p.before, second), first)
        assert p.edit.outcomes(p.before) == (p.after, apply_edit(p.before, first), apply_edit(p.before, second))
        assert world.changes_image(apply_edit(p.before, first), p.after)  # the second part shows
        assert world.changes_image(apply_edit(p.before, second), p.after)  # and the first
        assert p.before.split == "train" and not any(world.is_heldout_combo(e) for e in (first, second))
    assert {p.edit.first.category in world.SCENE_WIDE_CATEGORIES for p in pairs} == {True, False}  # both orders
    joiners = set()
    for p in pairs:  # one wording of each part, joined by one of the joiners
        words = [[e.instruction(wording=k) for k in range(len(EDIT_TYPES[e.type].wordings))]
                 for e in (p.edit.first, p.edit.second)]
        found = {j for j in world.COMPOUND_JOINERS for a in words[0] for b in words[1] if a + j + b == p.instruction}
        assert found, p.instruction
        joiners |= found
    assert joiners == set(world.COMPOUND_JOINERS)
    edit = world.CompoundEdit(Edit("style_watercolor"), Edit("replace_star", target="circle"))
    assert edit.instruction(wording=0) == "make it a watercolor painting and turn the circle into a star"
    assert edit.name == "style_watercolor+replace_star/circle" and edit.category == "compound"
    with pytest.raises(WorldError, match="one explicit style or background edit and one object edit"):
        world.CompoundEdit(Edit("recolor_red", target="circle"), Edit("remove", target="star"))
    with pytest.raises(WorldError, match="one explicit style"):
        world.CompoundEdit(Edit("drawing", value="ink"), Edit("remove", target="star"))


def test_shape_twins_change_one_objects_shape_and_one_caption_word():
    rng = random.Random(3)
    for _ in range(40):
        scene = world.random_scene(rng, "train")
        twin = world.shape_twin(scene, rng)
        assert twin.split == "train" and (twin.background, twin.style) == (scene.background, scene.style)
        changed = [(a, b) for a, b in zip(scene.objects, twin.objects) if a != b]
        assert len(changed) == 1
        (a, b), = changed
        assert a.shape != b.shape and (a.color, a.size, a.x, a.y) == (b.color, b.size, b.x, b.y)
        assert b.shape not in {o.shape for o in scene.objects}
        assert scene.caption.replace(a.shape, b.shape) == twin.caption
    assert world.shape_twin(scene, random.Random(1)) == world.shape_twin(scene, random.Random(1))
    # a twin lies in the split asked for, or there is none
    held = world.random_scene(random.Random(2), "test")
    try:
        assert world.shape_twin(held, random.Random(0), "test").split == "test"
    except world.WorldError as e:
        assert "no shape twin" in str(e)


def test_absent_pairs_name_a_shape_the_scene_lacks_and_change_nothing():
    rng = random.Random(4)
    pairs = [world.absent_pair(rng, "train") for _ in range(60)]
    for p in pairs:
        assert p.after == p.before and p.before.split == "train"
        assert p.edit.category in world.TARGETED_CATEGORIES and not world.is_heldout_combo(p.edit)
        assert p.edit.target not in {o.shape for o in p.before.objects}
        assert p.edit.target in p.instruction
        with pytest.raises(world.EditNotApplicable):  # the edit itself does not apply: nothing to do
            apply_edit(p.before, p.edit)
    assert {p.edit.category for p in pairs} == set(world.TARGETED_CATEGORIES)
    assert {len(p.before.objects) for p in pairs} == {1, 2, 3}
    p = world.absent_pair(random.Random(1), "test")
    assert p.before.split == "test" and world.is_heldout_combo(p.edit)


def test_shape_twins_draws_scenes_that_have_a_twin_in_the_split():
    pairs = world.shape_twins(random.Random(7), 5, "test")
    assert len(pairs) == 5 and all(a.split == b.split == "test" and a != b for a, b in pairs)
    assert pairs == world.shape_twins(random.Random(7), 5, "test")
