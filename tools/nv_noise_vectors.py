"""Record what NVIDIA CUDA torch.randn draws for a few seeds and shapes (reference for the "NV" noise source).

Run on a CUDA machine:  python tools/nv_noise_vectors.py tests/data/nv_randn.json
Each entry: the first 16 values and the float64 sum of all values (float32 draws).
"""

from __future__ import annotations

import json
import sys

import torch

SEEDS = (0, 1, 42, 123456789, 4294967295)
SHAPES = ((4, 64, 64), (1, 4, 8, 8), (3,))


def reference_vectors() -> dict:
    entries = []
    for seed in SEEDS:
        for shape in SHAPES:
            g = torch.Generator("cuda").manual_seed(seed)
            values = torch.randn(shape, generator=g, device="cuda", dtype=torch.float32).cpu()
            entries.append({"seed": seed, "shape": list(shape), "first16": values.flatten()[:16].tolist(),
                            "sum": float(values.double().sum())})
    return {"torch": torch.__version__, "gpu": torch.cuda.get_device_name(0), "entries": entries}


def main(argv: list[str]) -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device", file=sys.stderr)
        return 1
    text = json.dumps(reference_vectors(), indent=1)
    if len(argv) > 1:
        with open(argv[1], "w") as f:
            f.write(text + "\n")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
