# ruff: noqa: E402
import json, sys
sys.path.insert(0, "/work/main/scripts")
import torch
torch.set_num_threads(1)
import compare_inits as ci
from pairedit import visii, world
from pairedit.images import fit
from pairedit.metrics import ClipFeatures
from pairedit.models import load_clip, instruction_bank
clip, proc = load_clip("bundled")
cf = ClipFeatures(clip, proc)
bank = instruction_bank("bundled")
G = set(open('/work/runs/s36/all_instructions.txt').read().split('\n'))
for s in (1, 2):
    rows = json.load(open(f'/work/main/docs/visii/words_bank_seed{s}.json'))['rows']
    dirs = {d.key: d for d in ci.directions(s, [])}
    for r in rows:
        if r['init'] != 'bank':
            continue
        d = dirs[r['direction']]
        p = d.examples[0]
        b, a = p.images()
        shapes = [o.shape for o in p.before.objects]
        cands = [r['init_text']] + [c for c in visii.one_word_swaps(r['init_text'], bank) if c in G]
        fi = cf.image_features([b, a])
        ft = cf.text_features(cands)
        fi = fi / fi.norm(dim=-1, keepdim=True); ft = ft / ft.norm(dim=-1, keepdim=True)
        delta = fi[1] - fi[0]
        simb = (ft @ fi[0]).tolist(); simd = (ft @ delta / delta.norm()).tolist()
        ob = max(range(len(cands)), key=lambda i: simb[i]); od = max(range(len(cands)), key=lambda i: simd[i])
        print(s, r['edit'], shapes, '| pick:', cands[0], '| clip-before:', cands[ob], '| clip-delta:', cands[od])
