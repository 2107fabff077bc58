"""One training step (forward + backward) of M `cpu`-preset U-Nets: one member alone, the M
members one after the other, the M members as one network of grouped convolutions
(activeseg.stacked.StackedUNet) and through torch.func.functional_call + vmap (no dropout and
no BatchNorm running statistics there: vmap supports neither; a lower bound of its cost).
Median of 5 rounds of 3 steps each, taken round-robin. Not run by CI.

    python benchmarks/committee_step.py [THREADS] [PRECISION]
"""

import copy
import statistics
import sys
import time

import torch
from torch.func import functional_call, replace_all_batch_norm_modules_, stack_module_state, vmap

from activeseg.model import seeded_dropout, seeded_unet
from activeseg.runtime import resolve, torch_generator
from activeseg.stacked import seed_members, stack

torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
M, B, P = 5, 8, 128
rt = resolve("cpu", sys.argv[2] if len(sys.argv) > 2 else "auto")
members = [seeded_unet(s, 4, 8, 0.2) for s in range(M)]
for m in members:
    rt.place(m)
    m.train()
net = stack([copy.deepcopy(m) for m in members], grouped=True)
rt.place(net)
net.train()
seed_members(net, [torch_generator(i) for i in range(M)])
x = rt.tensor(torch.randn(B, M, P, P))
plain = [seeded_unet(s, 4, 8, 0.0) for s in range(M)]
for m in plain:
    replace_all_batch_norm_modules_(m)
    rt.place(m)
    m.train()
params, buffers = stack_module_state(plain)
base = copy.deepcopy(plain[0]).to("meta")
xv = x.permute(1, 0, 2, 3).unsqueeze(2).contiguous()  # [M, B, 1, P, P]


def one(p: dict, b: dict, xi: torch.Tensor) -> torch.Tensor:
    return functional_call(base, (p, b), (xi,))


def member_step(i: int) -> None:
    m = members[i]
    with seeded_dropout(m, torch_generator(i)), rt.autocast():
        out = m(x[:, i : i + 1].contiguous(memory_format=torch.channels_last))
    out.float().square().mean().backward()


def grouped() -> None:
    with rt.autocast():
        out = net(x)
    out.float().square().mean().backward()


def vmapped() -> None:
    with rt.autocast():
        out = vmap(one)(params, buffers, xv)
    out.float().square().mean().backward()


steps = {
    "one member": lambda: member_step(0),
    f"{M} members one after the other": lambda: [member_step(i) for i in range(M)],
    f"{M} members, grouped convolutions": grouped,
    f"{M} members, functional_call + vmap": vmapped,
}
for f in steps.values():
    f()
    f()
times: dict[str, list[float]] = {k: [] for k in steps}
for _ in range(5):
    for k, f in steps.items():
        start = time.perf_counter()
        for _ in range(3):
            f()
        times[k].append((time.perf_counter() - start) / 3)
for k, v in times.items():
    print(f"{k}: {statistics.median(v) * 1000:.1f} ms/step")
