"""Bench the weights path on this machine: loopback download speed, sha256 throughput, what a cache
hit costs (every use hashes the file again), and the safe loader's cost against an unrestricted
torch.load.

    python bench/bench_hub.py [--megabytes 100]

Prints figures only; nothing here is a test. The checkpoint is a full-size HT-Demucs package
(random float16 weights in the published shapes), written the way demucs exports it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
SHARED = Path(os.environ.get("SFSEP_SHARED") or REPO.parent / "shared")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--megabytes", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from loopback_server import LoopbackServer

    from sfsep import checkpoint, hub
    from sfsep.registry import WeightsSource

    with tempfile.TemporaryDirectory() as folder:
        os.environ["SFSEP_CACHE"] = str(Path(folder) / "cache")
        payload = os.urandom(args.megabytes * 1_000_000)
        server = LoopbackServer()
        digest = __import__("hashlib").sha256(payload).hexdigest()
        source = WeightsSource(url=server.add("/bench.bin", payload), sha256=digest)
        started = time.perf_counter()
        path = hub.ensure(source, progress=False)
        download = time.perf_counter() - started
        started = time.perf_counter()
        hub.sha256_of(path)
        hashing = time.perf_counter() - started
        started = time.perf_counter()
        hub.ensure(source, progress=False)
        hit = time.perf_counter() - started
        server.close()
        print(f"download over loopback incl. sha256: {args.megabytes / download:7.1f} MB/s "
              f"({download:.2f} s for {args.megabytes} MB)")
        print(f"sha256 alone:                        {args.megabytes / hashing:7.1f} MB/s")
        print(f"cache hit (hashes the file again):   {hit * 1000:7.2f} ms (sha256 alone: {hashing * 1000:.0f} ms)")

        shapes = json.loads((SHARED / "parity" / "htdemucs_demucsrepo.manifest.json").read_text())["state_dict"]
        state = {key: torch.randn(shape if isinstance(shape, list) else shape["shape"]).half()
                 for key, shape in shapes.items()}
        demucs, htdemucs = types.ModuleType("demucs"), types.ModuleType("demucs.htdemucs")
        klass = type("HTDemucs", (), {"__module__": "demucs.htdemucs"})
        htdemucs.HTDemucs = klass
        sys.modules["demucs"], sys.modules["demucs.htdemucs"] = demucs, htdemucs
        package = Path(folder) / "955717e8-00000000.th"
        torch.save({"klass": klass, "args": (), "kwargs": {"sources": ["drums", "bass", "other", "vocals"]},
                    "state": state, "training_args": {}}, package)
        size = package.stat().st_size / 1e6
        started = time.perf_counter()
        torch.load(package, map_location="cpu", weights_only=False)  # what demucs does (trusts the file)
        unrestricted = time.perf_counter() - started
        del sys.modules["demucs"], sys.modules["demucs.htdemucs"]
        started = time.perf_counter()
        checkpoint.read_pickle(package)
        restricted = time.perf_counter() - started
        started = time.perf_counter()
        loaded = checkpoint.load_checkpoint(package)
        whole = time.perf_counter() - started
        print(f"HT-Demucs package ({size:.1f} MB, {len(loaded.state)} tensors): restricted unpickling "
              f"{restricted:.2f} s vs unrestricted torch.load {unrestricted:.2f} s (ratio "
              f"{restricted / unrestricted:.2f}); with the float16 -> float32 upcast {whole:.2f} s")


if __name__ == "__main__":
    main()
