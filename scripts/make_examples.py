"""Regenerate the bundled VISII example images in src/pairedit/examples/ (deterministic).

    python scripts/make_examples.py

One example pair and four test pairs of one edit direction ("make it a watercolor painting"),
all drawn from held-out (test-split) scenes of pairedit.world, so no bundled model trained on them.
`pairedit demo` learns from the example pair and applies the edit to the test befores.
"""

from __future__ import annotations

import json
from pathlib import Path

from pairedit import world
from pairedit.images import save_image

OUT = Path(__file__).resolve().parents[1] / "src" / "pairedit" / "examples"
EDIT = world.Edit("style_watercolor")
SEED = 0
N_TESTS = 4


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    pairs = world.direction_pairs(EDIT, 1 + N_TESTS, seed=SEED, split="test")
    names = ["example"] + [f"test_{i}" for i in range(1, N_TESTS + 1)]
    files = []
    for name, pair in zip(names, pairs):
        before, after = pair.images()
        save_image(before, OUT / f"{name}_before.png")
        save_image(after, OUT / f"{name}_after.png")
        files.append([f"{name}_before.png", f"{name}_after.png"])
    info = {
        "edit": EDIT.name,
        "instruction": EDIT.instruction(wording=0),
        "example": files[0],
        "tests": files[1:],
        "captions": [[p.before.caption, p.after.caption] for p in pairs],
        "made_by": "scripts/make_examples.py",
    }
    (OUT / "examples.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"wrote {len(files) * 2} images and examples.json to {OUT}")


if __name__ == "__main__":
    main()
