"""MC scoring at T = 50 on phantom patches, the paper network (4 patches of 128²) and the
`cpu` preset's (48 of the preset's patch size): activeseg (fp32, bf16) against a naive fp32
loop and baal 2.1 (default and MCCachingModule), the rows of `activeseg bench` alone, with
the matmul peaks and the load average before and after. Not run by CI.

    python benchmarks/mc_t50.py OUT.json
"""

import json
import os
import sys

import torch

from activeseg.bench.mc import bench_mc
from activeseg.bench.measure import FULL, Context, cpu_info, make_net, matmul_peak

print(cpu_info(), "load before", os.getloadavg(), torch.get_num_threads(), "threads")
peaks = {"fp32": matmul_peak(torch.float32, 2048), "bf16": matmul_peak(torch.bfloat16, 1024)}
print("peaks", peaks)
ctx = Context(FULL, peaks, print)
out = {"peaks": peaks}
nets = (("paper", 5, 32, FULL.paper_pool, FULL.paper_patch), ("cpu", 4, 8, FULL.pool, FULL.patch))
for name, d, f, pool, patch in nets:
    rows = bench_mc(ctx, name, make_net(d, f), pool, patch, True)
    best = rows["activeseg bf16"]["seconds"]
    out[name] = {k: r["seconds"] for k, r in rows.items()}
    for k, r in rows.items():
        print(name, k, f"{r['seconds']:.2f} s", f"x{r['seconds'] / best:.2f}")
out["load_after"] = os.getloadavg()
print("load after", out["load_after"])
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
