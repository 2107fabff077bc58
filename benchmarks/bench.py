"""The ratio benchmarks of :mod:`activeseg.bench` (``activeseg bench``), not run by CI.

    pip install -e ".[bench]"   # baal, the reference implementation
    python benchmarks/bench.py --json bench.json \\
        --sem data_axondeepseg_sem

Arguments as ``activeseg bench --help``.
"""

import sys

from activeseg.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
