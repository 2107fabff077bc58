"""`cpu`-net training steps (activeseg.train.fit, batch 8, 128²) with BatchNorm layers of fewer
than 16 channels trained through the contiguous layout (model.NARROW_CHANNELS = 16, the
default) and without (0), for precision auto and fp32; medians of 3 rounds of 20 steps taken
round-robin. Not run by CI.

    python benchmarks/narrow_batchnorm.py THREADS
"""

import statistics
import sys
import time

import torch

import activeseg.model as model_module
from activeseg.bench.measure import make_net, pool_images
from activeseg.bench.training import train_config
from activeseg.runtime import resolve, torch_generator
from activeseg.train import Labelled, fit

torch.set_num_threads(int(sys.argv[1]))
images = pool_images(16, 128)
data = Labelled(images, (images > 0.5).float())
val = Labelled(images[:1], data.masks[:1])
result = {}
for precision in ("auto", "fp32"):
    runtime = resolve("cpu", precision)
    times: dict[int, list[float]] = {16: [], 0: []}
    for narrow in times:  # warm-up
        model_module.NARROW_CHANNELS = narrow
        fit(make_net(4, 8), data, val, train_config(2, 8), runtime, torch_generator(0))
    for _ in range(3):
        for narrow in times:
            model_module.NARROW_CHANNELS = narrow
            start = time.perf_counter()
            fit(make_net(4, 8), data, val, train_config(20, 8), runtime, torch_generator(0))
            times[narrow].append(time.perf_counter() - start)
    result[precision] = {
        ("contiguous" if k else "channels-last"): round(statistics.median(v) / 20 * 1000, 1)
        for k, v in times.items()
    }
print(f"{sys.argv[1]} threads, ms per cpu-net training step:", result)
