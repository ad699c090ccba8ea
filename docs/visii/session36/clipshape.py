# ruff: noqa: E402
import json, sys
sys.path.insert(0, "/work/main/scripts")
import torch
torch.set_num_threads(1)
import compare_inits as ci
from pairedit import world
from pairedit.metrics import ClipFeatures
from pairedit.models import load_clip
clip, proc = load_clip("bundled")
cf = ClipFeatures(clip, proc)
S = world.SHAPES
tf = cf.text_features([f"a {c} {s}" for s in S for c in world.COLORS]).view(len(S), len(world.COLORS), -1)
tf = tf / tf.norm(dim=-1, keepdim=True)
tf = tf.mean(1)
hit = tot = 0
for s in (0, 1, 2):
    for d in ci.directions(s, []):
        p = d.examples[0]
        shapes = {o.shape for o in p.before.objects}
        f = cf.image_features([p.images()[0]]); f = f / f.norm()
        sim = (tf @ f[0]).tolist()
        order = sorted(range(len(S)), key=lambda i: -sim[i])
        top = [S[i] for i in order[:len(shapes)]]
        hit += len(set(top) & shapes); tot += len(shapes)
        print(s, d.edit.name if hasattr(d, 'edit') else '', sorted(shapes), top)
print('recall@k', hit, tot)
