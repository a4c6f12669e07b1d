"""Make examples/demo_8k.wav: six seconds of generated music at 8 kHz (no recordings).

The mixture of one clip of sfsep's procedural music generator (`sfsep.demo.generate`, its
"example" split, which the demo model is neither trained nor validated on): synthesized drums, a
filtered bass line, pads or plucks, and a formant-synthesized voice, made at 44.1 kHz, brought down
to 8 kHz with sfsep's conventional resampler and written as 16-bit PCM: the kind of telephone-band
recording sfsep's sampling-rate handling is for. Deterministic: the same file every run.

    python examples/make_demo.py [OUTPUT] [--rate 8000] [--seconds 6] [--index 0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from sfsep.demo.generate import RATE, generate_clip
from sfsep.resample import resample

SEED = 0


def make_demo(rate: int = 8000, seconds: float = 6.0, index: int = 0) -> np.ndarray:
    """(samples, 2) float32 at `rate`."""
    mixture = torch.from_numpy(generate_clip(SEED, "example", index, seconds).sum(0))
    low = mixture if rate == RATE else resample(mixture, RATE, rate, "conventional")
    return low.numpy().T.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default=str(Path(__file__).with_name("demo_8k.wav")))
    parser.add_argument("--rate", type=int, default=8000)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--index", type=int, default=0, help="which clip of the example split")
    args = parser.parse_args()
    sf.write(args.output, make_demo(args.rate, args.seconds, args.index), args.rate, subtype="PCM_16")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
