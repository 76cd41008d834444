"""The quality benchmark at medium size: Fashion-MNIST, 55,000 training images.

    python benchmarks/scale.py --json [--config benchmarks/configs/fashion-mnist.yaml]

GS-LoRA++ with full data and with 4 shots vs retraining from scratch without the forgotten
classes; the same keys as quality.py (one class pair, tshirt_top + trouser). Needs Debian's
``dataset-fashion-mnist`` (the importer names the package when it is missing).
"""

from __future__ import annotations

import sys
from pathlib import Path

from quality import main as quality_main  # benchmarks/ is on sys.path as a script

CONFIG = Path(__file__).with_name("configs") / "fashion-mnist.yaml"

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--config" not in args:
        args += ["--config", str(CONFIG)]
    quality_main(["--quick", *args])
