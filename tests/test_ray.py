"""`--engine ray` (issue 15): `batch` and `eval` on a Ray cluster give what the local engine gives.

One local Ray instance serves the tests of this module (`ray_cluster`, 2 CPUs, no dashboard);
they share the xdist group "ray", so that under `pytest -n 2 --dist loadgroup` they all run in one
worker and the suite starts one instance. The tests without a cluster (the optional import, the
missing extra, usage errors) need none. Local runs here use one torch thread (conftest) and each
Ray worker one CPU, hence one thread: the same arithmetic, so the outputs compare bit for bit.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
import torch
import yaml

from conftest import CliResult, files_below, interrupt_once_staged, one_line_error, tone_mix
from test_eval import make_musdb

ENV = {**os.environ, "SFSEP_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
STEMS = ("vocals", "drums", "bass", "other")
on_ray = pytest.mark.xdist_group("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance for this module's tests; `sfsep --engine ray` in this process uses it."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def tiny_scnet(tmp_path, shared) -> list[str]:
    """The tiny SCNet fixture as a user's checkpoint and config: a model with a trained rate
    (44.1 kHz), so that 8 kHz inputs go through the random noisy kernel and --seed matters."""
    data = torch.load(shared / "parity" / "scnet_tiny.pt", weights_only=True)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(data["config"], sort_keys=False))
    torch.save({"state_dict": data["state_dict"]}, tmp_path / "tiny.ckpt")
    return ["--model", "scnet", "--weights", str(tmp_path / "tiny.ckpt"), "--config", str(tmp_path / "tiny.yaml")]


def _music(folder: Path, seconds: float = 0.6, count: int = 3) -> Path:
    """`count` songs at 8 kHz (with 3 or more, the last one in sub/) and a file that is not audio."""
    for index in range(count):
        sub = folder / ("sub" if index == count - 1 and count >= 3 else "")
        sub.mkdir(parents=True, exist_ok=True)
        sf.write(sub / f"song{index}.wav", tone_mix(8000, seconds, 2, seed=index), 8000)
    (folder / "broken.wav").write_bytes(b"not audio at all")
    return folder


def _contents(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in files_below(folder)}


def _without_timings(text: str) -> str:
    """A batch table or JSON line with its run times and output folder taken out."""
    text = re.sub(r"\d+\.\d s:", "T s:", text)
    return re.sub(r'"seconds": [0-9.]+', '"seconds": T', text)


# ----------------------------------------------------------------------------------------
# Ray is optional


def test_import_sfsep_and_a_local_batch_never_import_ray(tmp_path):
    music = _music(tmp_path / "music", seconds=0.3, count=1)
    script = ("import sys\nimport sfsep\nfrom sfsep.cli import main\n"
              "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
              "print('ray imported' if 'ray' in sys.modules else 'no ray')\n")
    done = subprocess.run([sys.executable, "-c", script, "-q", "batch", str(music), "--model", "classic", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, env=ENV)
    assert done.stdout.strip().splitlines()[-1] == "no ray", done
    assert len(files_below(tmp_path / "out" / "classic")) == 4, done


# Runs the command line in a Python where `import ray` fails as it does without the extra.
_WITHOUT_RAY = """
import sys

class NoRay:
    def find_spec(self, name, path=None, target=None):
        if name == "ray" or name.startswith("ray."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoRay())
from sfsep.cli import main
main(sys.argv[1:])
"""


@pytest.mark.parametrize("command", ["batch", "eval"])
def test_engine_ray_without_ray_is_one_error_naming_the_extra(tmp_path, command):
    music = _music(tmp_path / "music", seconds=0.3, count=1)
    where = [str(music)] if command == "batch" else ["--musdb", str(make_musdb(tmp_path / "musdb"))]
    done = subprocess.run([sys.executable, "-c", _WITHOUT_RAY, command, *where, "--model", "classic", "--engine",
                           "ray", "--out", str(tmp_path / "out")], capture_output=True, text=True, env=ENV)
    one_line_error(CliResult(done.returncode, done.stdout, done.stderr), "pip install 'sfsep[ray]'", code=1)
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--workers", "2"], "--workers: only applies with --engine ray"),
    (["--address", "auto"], "--address: only applies with --engine ray"),
    (["--engine", "spark"], "--engine spark"),
    (["--engine", "ray", "--jobs", "2"], "--workers sets how many Ray workers"),
    (["--engine", "ray", "--workers", "0"], "--workers 0"),
    (["--engine", "ray", "--cpus-per-worker", "0"], "--cpus-per-worker 0"),
    (["--engine", "ray", "--device", "cpu", "--gpus-per-worker", "1"], "GPUs they do not use"),
])
def test_engine_options_that_cannot_work_are_usage_errors(run_cli, tmp_path, args, fragment):
    music = _music(tmp_path / "music", seconds=0.3, count=1)
    result = run_cli("batch", music, "--model", "classic", "--out", tmp_path / "out", *args)
    one_line_error(result, fragment, code=2)
    assert not (tmp_path / "out").exists()


def test_an_address_where_no_cluster_answers_is_one_error_at_once(tmp_path):
    """Ray itself retries such an address for minutes, printing warnings."""
    music = _music(tmp_path / "music", seconds=0.3, count=1)
    (music / "broken.wav").unlink()
    script = Path(sys.executable).with_name("sfsep")
    started = time.monotonic()
    done = subprocess.run([str(script), "batch", str(music), "--model", "classic", "--out", str(tmp_path / "out"),
                           "--engine", "ray", "--address", "127.0.0.1:1"], capture_output=True, text=True, env=ENV,
                          timeout=120)
    one_line_error(CliResult(done.returncode, done.stdout, done.stderr), "--address 127.0.0.1:1: no Ray cluster "
                   "answers there", code=1)
    assert time.monotonic() - started < 60 and not list((tmp_path / "out").rglob("*.wav"))


# ----------------------------------------------------------------------------------------
# batch


@on_ray
def test_batch_on_ray_equals_the_local_engine_bit_for_bit(run_cli, tmp_path, ray_cluster, tiny_scnet):
    music = _music(tmp_path / "music")
    common = ["batch", music, "-R", *tiny_scnet, "--resampler", "noisy", "--seed", "7", "--format", "flac"]
    local = run_cli(*common, "--out", tmp_path / "local", "--json")
    # one track's stems are there already: skipped on the cluster, as the local engine skips them
    for stem in (tmp_path / "local" / "scnet" / "song1").iterdir():
        (tmp_path / "ray" / "scnet" / "song1").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ray" / "scnet" / "song1" / stem.name).write_bytes(stem.read_bytes())
    on_cluster = run_cli(*common, "--out", tmp_path / "ray", "--json", "--engine", "ray", "--workers", "2")
    assert local.code == on_cluster.code == 1, (local, on_cluster)  # broken.wav fails alone, in both
    assert "broken.wav" in local.err and on_cluster.err.startswith(local.err)  # and the skip's note:
    assert on_cluster.err[len(local.err):].startswith("song1.wav: skipped (")
    statuses = {Path(line["file"]).name: line["status"] for line in map(json.loads, on_cluster.out.splitlines())}
    assert statuses == {"broken.wav": "failed", "song0.wav": "done", "song1.wav": "skipped", "song2.wav": "done"}
    ours = {Path(json.loads(line)["file"]).name: _without_timings(line).replace(str(tmp_path / "ray"), "OUT")
            for line in on_cluster.out.splitlines()}
    theirs = {Path(json.loads(line)["file"]).name: _without_timings(line).replace(str(tmp_path / "local"), "OUT")
              for line in local.out.splitlines()}
    del ours["song1.wav"], theirs["song1.wav"]
    assert ours == theirs
    written = _contents(tmp_path / "ray")
    assert {str(Path(name).parent) for name in written} == {"scnet/song0", "scnet/song1", "scnet/sub/song2"}
    assert written == _contents(tmp_path / "local")



# Runs the command line, printing at each start of Ray workers how many and whether this
# process had imported torch by then.
_NOTING_STARTS = """
import sys
from sfsep.ray_engine import RayEngine

start = RayEngine._start_workers

def noted(engine, ray, count):
    print(f"workers started: {count}, torch imported: {'torch' in sys.modules}", flush=True)
    return start(engine, ray, count)

RayEngine._start_workers = noted
from sfsep.cli import main
main(sys.argv[1:])
"""


@on_ray
def test_the_command_line_starts_its_workers_before_it_imports_torch(tmp_path, ray_cluster):
    """`batch` and `eval` start the workers first, so that their start (new processes importing
    torch) runs while the driver imports torch, checks the run and loads the model; no more
    workers than files; and a run refused at once (no such folder, no files, --jobs) starts none."""
    music = _music(tmp_path / "music", seconds=0.3, count=1)
    (music / "broken.wav").unlink()
    joining = {**ENV, **os.environ}  # with the token ray.init set in this process for its cluster

    def sfsep(*args) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _NOTING_STARTS, *map(str, args), "--model", "classic",
                               "--engine", "ray", "--address", ray_cluster], capture_output=True, text=True,
                              env=joining, timeout=300)

    done = sfsep("batch", music, "--out", tmp_path / "out")
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[0] == "workers started: 1, torch imported: False", done.stdout
    assert done.stdout.count("workers started") == 1
    assert len(files_below(tmp_path / "out" / "classic")) == 4
    root = make_musdb(tmp_path / "musdb")
    done = sfsep("eval", "--musdb", root, "--rates", "8000", "--resamplers", "conventional", "--out",
                 tmp_path / "eval", "--json")
    assert done.returncode == 0, done
    assert done.stdout.splitlines()[0] == "workers started: 2, torch imported: False", done.stdout
    assert done.stdout.count("workers started") == 1

    (tmp_path / "empty").mkdir()
    for refused, message in (([tmp_path / "nothing"], "no such folder"), ([tmp_path / "empty"], "no audio files"),
                             ([music, "--jobs", "2"], "--jobs 2")):
        done = sfsep("batch", *refused, "--out", tmp_path / "refused")
        one_line_error(CliResult(done.returncode, done.stdout, done.stderr), message)
        assert "workers started" not in done.stdout and not (tmp_path / "refused").exists()


@on_ray
def test_a_worker_killed_mid_file_is_retried_and_leaves_nothing_half_written(run_cli, tmp_path, ray_cluster,
                                                                             monkeypatch):
    """And --overwrite replaces an earlier run's stems, with the local engine's summary table."""
    music = _music(tmp_path / "music", seconds=2.0)
    for out in ("ray", "local"):  # an earlier run's stems of song0, different from what comes now
        folder = tmp_path / out / "classic" / "song0"
        folder.mkdir(parents=True)
        for stem in STEMS:
            sf.write(folder / f"{stem}.wav", tone_mix(8000, 0.1, 2, seed=9), 8000)
    marker = tmp_path / "killed"
    monkeypatch.setenv("SFSEP_TEST_KILL_WORKER", str(marker))
    on_cluster = run_cli("batch", music, "-R", "--model", "classic", "--out", tmp_path / "ray", "--engine", "ray",
                         "--overwrite")
    assert marker.exists(), "no worker was killed"
    assert on_cluster.code == 1 and "3 done, 0 skipped, 1 failed" in on_cluster.out, on_cluster
    assert "ray: A worker died" in on_cluster.err
    monkeypatch.delenv("SFSEP_TEST_KILL_WORKER")
    local = run_cli("batch", music, "-R", "--model", "classic", "--out", tmp_path / "local", "--overwrite")
    assert local.code == 1
    assert _without_timings(on_cluster.out) == _without_timings(local.out)
    written = _contents(tmp_path / "ray")  # no .part file, no lock file: only the stems
    assert sorted(written) == sorted(f"classic/{track}/{stem}.wav" for track in ("song0", "song1", "sub/song2")
                                     for stem in STEMS)
    assert written == _contents(tmp_path / "local")


@on_ray
def test_kept_workers_start_once_serve_several_runs_and_end_with_the_block(tmp_path, ray_cluster, monkeypatch):
    """`RayEngine.keep_workers()`, for a program that makes several runs: the workers start when
    the block begins and serve each run (batches and an evaluation, with the local engine's
    results), hold no model and no audio between runs, start the next run clean after one was
    stopped half way (the caller stopped listening), and end with the block."""
    import ray
    from ray.exceptions import RayActorError

    from sfsep.evaluate.runner import evaluate_model
    from sfsep.pipeline import ModelChoice, OutputOptions, Settings
    from sfsep.ray_engine import RayEngine
    from sfsep.runs import separate_folder

    music = _music(tmp_path / "music", seconds=2.0)
    (music / "broken.wav").unlink()
    model, settings = ModelChoice("classic", device="cpu"), Settings(device="cpu")
    separate_folder(music, model, OutputOptions(out=tmp_path / "local"), settings, recursive=True)
    started: list[int] = []
    start = RayEngine._start_workers
    monkeypatch.setattr(RayEngine, "_start_workers",
                        lambda engine, ray, count: started.append(count) or start(engine, ray, count))

    with RayEngine(workers=2).keep_workers() as engine:
        assert started == [2] and len(engine.kept) == 2
        first = separate_folder(music, model, OutputOptions(out=tmp_path / "first"), settings, recursive=True,
                                engine=engine)
        assert first.counts()["done"] == 3 and _contents(tmp_path / "first") == _contents(tmp_path / "local")
        held = ray.get([worker.__ray_call__.remote(lambda worker: (worker.loaded, worker.audio))
                        for worker in engine.kept], timeout=60)
        assert held == [(None, None), (None, None)]

        # a run whose caller stops listening after its first file: the workers are told to stop
        separator = engine.load(model)
        songs = sorted(music.rglob("*.wav"))
        results = engine.separate(separator, [(path, path.stem) for path in songs],
                                  OutputOptions(out=tmp_path / "stopped" / "classic"), settings)
        assert next(results).status == "done"
        results.close()

        second = separate_folder(music, model, OutputOptions(out=tmp_path / "second"), settings, recursive=True,
                                 engine=engine)
        assert [result.status for result in second.results] == ["done"] * 3, second.results
        assert _contents(tmp_path / "second") == _contents(tmp_path / "local")
        # and an evaluation, whose cells hold a track's audio on the workers
        root = make_musdb(tmp_path / "musdb")
        options = dict(rates=[8000], resamplers=["noisy"], settings=settings, seed=3)
        scored, _ = evaluate_model(model, root, tmp_path / "eval-ray", engine=engine, **options)
        assert started == [2]  # no worker started for the runs
        held = ray.get([worker.__ray_call__.remote(lambda worker: (worker.loaded, worker.audio))
                        for worker in engine.kept], timeout=60)
        assert held == [(None, None), (None, None)]
        workers = engine.kept
    here, _ = evaluate_model(model, root, tmp_path / "eval-local", **options)

    def records(run) -> list[dict]:  # each result's record, but for its run times
        return [{key: value for key, value in result.record.items() if key != "seconds"} for result in run.results]

    assert len(here.results) == 2 and records(scored) == records(here)
    with pytest.raises(RayActorError):
        ray.get(workers[0].idle.remote(), timeout=60)


@on_ray
def test_gpus_the_cluster_does_not_have_are_one_error(run_cli, tmp_path, ray_cluster):
    music = _music(tmp_path / "music", seconds=0.3, count=1)
    (music / "broken.wav").unlink()
    result = run_cli("batch", music, "--model", "classic", "--out", tmp_path / "out", "--engine", "ray",
                     "--gpus-per-worker", "1")
    one_line_error(result, "--gpus-per-worker 1: the Ray cluster has 0 GPU(s)", code=1)
    assert not list((tmp_path / "out").rglob("*.wav"))


@on_ray
def test_ctrl_c_stops_the_workers_and_says_how_many_files_were_stored(tmp_path, ray_cluster):
    music = tmp_path / "music"
    music.mkdir()
    names = [f"track{index}" for index in range(6)]
    for index, name in enumerate(names):
        sf.write(music / f"{name}.wav", tone_mix(8000, 30.0, 2, seed=index), 8000)
    out = tmp_path / "out"
    script = Path(sys.executable).with_name("sfsep")
    joining = {**ENV, **os.environ}  # with the token ray.init set in this process for its cluster
    process = subprocess.Popen([str(script), "batch", str(music), "--model", "classic", "--out", str(out), "--engine",
                                "ray", "--address", ray_cluster], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=joining)
    err, stopped = interrupt_once_staged(process, out)
    assert process.returncode == 130, err
    match = re.search(r"interrupted: (\d+) file\(s\) separated and stored before it", err)
    assert match and "Traceback" not in err, err
    assert not list(out.rglob("*.part*")) and not list(out.rglob("*.lock")), files_below(out)
    sets = {name: len(list((out / "classic" / name).glob("*.wav"))) for name in names}
    assert set(sets.values()) <= {0, 4}, sets
    assert sum(1 for count in sets.values() if count) == int(match.group(1)) < len(names), (sets, err)
    assert stopped < 30  # the running files stopped at their next chunk


# ----------------------------------------------------------------------------------------
# eval


def _summary(result) -> dict:
    document = json.loads(result.out)
    document.pop("seconds")
    return document


@on_ray
def test_eval_on_ray_equals_the_local_engine_and_either_resumes_the_other(run_cli, tmp_path, ray_cluster,
                                                                          tiny_scnet, monkeypatch):
    root = make_musdb(tmp_path / "musdb")
    common = ["eval", "--musdb", root, *tiny_scnet, "--rates", "8000", "--resamplers", "noisy", "--seed", "3",
              "--json"]
    local = run_cli(*common, "--out", tmp_path / "local")
    assert local.code == 0, local
    # A run stopped after its first result, locally: the cluster computes the other one, and
    # a worker dies in the middle of it (retried).
    first = "records/noisy-8000/test/Alpha - First.json", "museval/noisy-8000/test/Alpha - First.json"
    for name in first:
        (tmp_path / "ray" / "scnet" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "ray" / "scnet" / name).write_bytes((tmp_path / "local" / "scnet" / name).read_bytes())
    marker = tmp_path / "killed"
    monkeypatch.setenv("SFSEP_TEST_KILL_WORKER", str(marker))
    on_cluster = run_cli(*common, "--out", tmp_path / "ray", "--engine", "ray", "--workers", "2")
    monkeypatch.delenv("SFSEP_TEST_KILL_WORKER")
    assert on_cluster.code == 0, on_cluster
    assert marker.exists(), "no worker was killed"
    ours, theirs = _summary(on_cluster), _summary(local)
    assert (ours.pop("cells_computed"), ours.pop("cells_reused")) == (1, 1)
    assert (theirs.pop("cells_computed"), theirs.pop("cells_reused")) == (2, 0)
    assert ours == theirs
    for name in ("table.csv", "scores.csv", "table.md", "museval/noisy-8000/test/Beta - Second.json"):
        assert (tmp_path / "ray" / "scnet" / name).read_bytes() == (tmp_path / "local" / "scnet" / name).read_bytes()

    # and a run stopped on the cluster resumes locally
    (tmp_path / "ray" / "scnet" / first[0]).unlink()
    resumed = run_cli(*common, "--out", tmp_path / "ray")
    assert (_summary(resumed)["cells_computed"], _summary(resumed)["cells_reused"]) == (1, 1)
    assert _summary(resumed)["results"] == theirs["results"]
