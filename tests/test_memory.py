"""Flat memory (issue 12, item 3): a longer file takes no more memory to separate.

Two fresh processes separate 1 and 6 minutes of 8 kHz stereo with `separate_file` and the
`conv_tasnet_tiny` parity fixture run by the published `conv_tasnet` spec: the file is read three
times (length check, normalization statistics, separation), upsampled to 44.1 kHz by the
stateful resampler, cut into 8-s chunks with demucs-style overlap, downsampled and written as
four stems. Each child reports its peak resident memory (VmHWM); the peaks may differ by less
than BOUND_MB. (The Conv-TasNet fixture runs about five times faster than the SCNet or
HT-Demucs fixtures, which keeps 7 minutes of 44.1 kHz model input to about half a minute of
CPU time.)

The bound. Each extra minute of 8 kHz stereo is 2.6 M stereo samples at the model rate, 21 MB per
float32 copy; a flow that holds the track holds at least the upsampled mixture and its four
stems there (5 copies, ~105 MB a minute), so 5 extra minutes cost hundreds of MB. Measured on this
2-core machine (peaks in MB, 1 min -> 6 min):

- streamed (block_frames = 2**18): 420 -> 423 (+3; four runs: 420.1, 420.7 -> 423.1, 423.4);
- the same code given the whole file as one block (block_frames = 10**9, so the input, its
  upsampled copy and the chunk window are whole-track tensors; the model's output, the
  downsampling and the writing still stream): 444 -> 840 (+395).
  `python tests/test_memory.py --whole` repeats this comparison.

BOUND_MB = 60 is a sixth of the growth when only the input side holds the track, and twenty
times the streamed growth.

The children run with MALLOC_MMAP_THRESHOLD_=131072 (glibc), so every tensor above 128 KiB is
mapped and unmapped with its life and the peak is what the flow holds. With glibc's default
(a threshold that rises to the largest block freed so far) the freed blocks stay in the heap for
reuse: the peak is then ~100 MB higher and moves by up to ~50 MB from one run of the same file to
the next (measured 516-572 MB for 1 and 6 minutes, 532 MB for 12), a retention that does not
grow with the length but would make the comparison flaky. bench/bench_memory.py measures with
the allocator's defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

RATE = 8000
SHORT_MINUTES, LONG_MINUTES = 1, 6
BOUND_MB = 60.0
STREAMED_BLOCK = 1 << 18  # sfsep.audio.BLOCK_FRAMES, the default of separate_file
WHOLE_BLOCK = 10**9  # more frames than any file here: the whole file is one block


def _peak_kib() -> int:
    """This process's peak resident memory in KiB (VmHWM; ru_maxrss where /proc is missing)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage // 1024 if sys.platform == "darwin" else usage


def _write_mix(path: Path, minutes: float) -> None:
    """Two tones and a little noise, stereo 16-bit, written 65536 frames at a time."""
    import numpy as np
    import soundfile as sf

    total = int(minutes * 60 * RATE)
    generator = np.random.default_rng(0)
    with sf.SoundFile(str(path), "w", samplerate=RATE, channels=2, subtype="PCM_16") as handle:
        for first in range(0, total, 1 << 16):
            t = np.arange(first, min(total, first + (1 << 16))) / RATE
            tones = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t)
            noise = 0.01 * generator.standard_normal((t.size, 2))
            handle.write((np.stack([tones, 0.8 * tones], axis=1) + noise).astype(np.float32))


def _child(minutes: float, folder: Path, block_frames: int) -> dict:
    """One measurement (in a fresh process): write the mix, separate it, report the peak."""
    import torch

    from parity import load_fixture
    from sfsep.models import build_model
    from sfsep.pipeline import OutputOptions, Separator, Settings, separate_file
    from sfsep.registry import get_spec

    torch.set_num_threads(1)
    path = folder / "mix.wav"
    _write_mix(path, minutes)
    fixture = load_fixture("conv_tasnet_tiny")
    module = build_model("conv_tasnet", fixture["config"])
    module.load_state_dict(fixture["state_dict"], strict=True)
    del fixture
    separator = Separator(get_spec("conv_tasnet"), device="cpu", modules=[module])
    started = time.perf_counter()
    result = separate_file(path, separator, output=OutputOptions(out=folder / "out"),
                           settings=Settings(device="cpu"), block_frames=block_frames)
    assert result.status == "done" and len(result.outputs) == 4
    return {"peak_kib": _peak_kib(), "seconds": time.perf_counter() - started}


def peak_mb(minutes: float, folder: Path, block_frames: int = STREAMED_BLOCK) -> float:
    """Peak resident MB of a fresh process separating `minutes` of 8 kHz stereo in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    environment = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(minutes), str(folder), str(block_frames)]
    done = subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)
    assert done.returncode == 0, f"the measuring process failed:\n{done.stderr[-3000:]}"
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return figures["peak_kib"] * 1024 / 1e6


def test_peak_memory_does_not_grow_with_the_track(tmp_path):
    short = peak_mb(SHORT_MINUTES, tmp_path / "short")
    long = peak_mb(LONG_MINUTES, tmp_path / "long")
    assert long - short < BOUND_MB, (
        f"separating {LONG_MINUTES} min took {long:.0f} MB at peak, {SHORT_MINUTES} min {short:.0f} MB: "
        f"{long - short:.0f} MB more (bound {BOUND_MB:.0f} MB); something holds the track")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    if sys.argv[1:2] == ["--child"]:
        minutes, folder, block_frames = float(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
        print(json.dumps(_child(minutes, folder, block_frames)))
    elif sys.argv[1:2] == ["--whole"]:
        # The check that the test catches whole-track processing (see the module docstring).
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            for label, block in (("streamed", STREAMED_BLOCK), ("whole file as one block", WHOLE_BLOCK)):
                short = peak_mb(SHORT_MINUTES, Path(scratch) / f"{block}-short", block)
                long = peak_mb(LONG_MINUTES, Path(scratch) / f"{block}-long", block)
                verdict = "within" if long - short < BOUND_MB else "over"
                print(f"{label}: {SHORT_MINUTES} min {short:.0f} MB, {LONG_MINUTES} min {long:.0f} MB, "
                      f"growth {long - short:+.0f} MB ({verdict} the {BOUND_MB:.0f} MB bound)")
    else:
        raise SystemExit("usage: python tests/test_memory.py --whole")
