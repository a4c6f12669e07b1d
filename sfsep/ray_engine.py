"""`sfsep batch --engine ray` and `sfsep eval --engine ray`: the same runs, on a Ray cluster.

A thin scheduling layer over the local flow; nothing here separates or scores.

What runs where
---------------
- The driver (the machine running `sfsep`): every check of the run, the output plan, the model
  loaded once (on its CPU, weights fetched and verified there), the results, the summary table,
  the progress bar, and for `eval` the resumable store (`CellOutcome.store`). The loaded model
  goes once into Ray's object store.
- The workers: `--workers` Ray actors (`SeparationWorker`), each requesting `--cpus-per-worker`
  CPUs and `--gpus-per-worker` GPUs. Each takes the model from the object store once (its first
  task names it there), moves it to its own device (`--device`, resolved on the worker: "auto"
  is the GPU Ray gave it), and then runs many actor tasks: one per file (`runs.separate_one`,
  which reads the input and publishes its stems into --out exactly as the local engine does) or
  one per (track, rate, resampler) of `eval` (`CellJob.compute`, which returns the record to the
  driver). A Ray `ActorPool` hands the next file or cell to whichever worker is free.
  The workers start with the run and end with it, or start once for several runs
  (`RayEngine.keep_workers()`; the command line uses it for its one run, so that the workers
  start before the driver imports torch: this module imports neither torch nor the rest of
  sfsep until a worker or a run needs them).
So the input files, --out and the MUSDB folder must be at the same path on every node (a shared
file system); the model need not be.

Faults
------
Workers are created with `max_restarts=-1` (a worker process that dies is started again, its
model taken again from the object store) and `max_task_retries=TASK_RETRIES`: the file or cell
it was running is tried again on the restarted worker. The retry of a file first removes the
staged files the dead attempt left (`audio.TrackLock.remove_leftovers`), so nothing half-written
stays behind; a cell's attempt never writes anything. A file whose worker died on every try is
reported failed and the others go on; for `eval` such a cell stops the run (the cells stored so
far stay stored, and a rerun resumes from them).

Ctrl-C
------
The driver tells every worker to stop (a second, concurrent actor method sets a flag that the
running file or cell checks between chunks, as the local engine's threads do: staged files are
removed as on a local Ctrl-C), hands over the results that still finish, drops the files or
cells not started, and re-raises KeyboardInterrupt; the command line then says how many results
were stored.

Connection
----------
`--address` (`auto`, `host:port` or `ray://host:port`) joins a running cluster; without it a
local Ray instance is started for the run (num_cpus = workers x cpus-per-worker, or the
machine's CPUs; no dashboard) and shut down after it. When the caller already started or joined
Ray (`ray.is_initialized()`, e.g. a library user or the tests), that connection is used and left
open.

Test-only hook: the environment variable `SFSEP_TEST_KILL_WORKER`, read on the driver, names a
marker file: the first worker that reaches a chunk while that file does not exist creates it and
kills its own process (`os._exit`), so the tests can check the retry. It is not a user option.

Ray is imported only here, and this module only when `--engine ray` is asked for; without Ray
installed that is one error naming the `sfsep[ray]` extra.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from .errors import ClusterError, UsageError

if TYPE_CHECKING:  # imported where they are used: this module loads without torch (see keep_workers)
    from .evaluate.runner import Cell, CellJob, CellOutcome, TrackAudio
    from .pipeline import FileResult, ModelChoice, OutputOptions, Separator, Settings

log = logging.getLogger(__name__)

TASK_RETRIES = 2
"""A file or cell whose worker process died is tried this many more times (Ray's
max_task_retries); after that it fails alone (batch) or stops the run (eval)."""
KILL_HOOK = "SFSEP_TEST_KILL_WORKER"
"""Test-only: a marker file; the first worker to reach a chunk without it creates it and dies."""
STOP_SECONDS = 120.0
"""After Ctrl-C, how long the driver waits for the running files or cells to stop (each stops at
its next chunk) before it ends the workers regardless."""
CONNECT_SECONDS = 5.0
"""How long --address HOST:PORT may take to accept a connection before the run gives up."""
INSTALL_HINT = "pip install 'sfsep[ray]'"


def import_ray():
    """The `ray` module, or a ClusterError naming the extra that installs it."""
    try:
        import ray
        from ray.util import ActorPool  # noqa: F401 (part of what the engine needs)
    except ImportError as exc:
        raise ClusterError(f"--engine ray needs Ray, which is not installed ({exc}); install the extra: "
                           f"{INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayEngine:
    """Where and how big: the cluster (`address`; None starts a local instance), the number of
    workers (None: as many as the cluster's CPUs, and GPUs, hold) and what each requests.
    Checks itself when made (UsageError naming the option)."""

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    kept: tuple | None = field(default=None, repr=False, compare=False)
    """The workers of a `keep_workers()` block (not an option: set by that method)."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")
        if not (self.cpus_per_worker > 0 and math.isfinite(self.cpus_per_worker)):
            raise UsageError(f"--cpus-per-worker {self.cpus_per_worker:g}: must be more than 0")
        if not (self.gpus_per_worker >= 0 and math.isfinite(self.gpus_per_worker)):
            raise UsageError(f"--gpus-per-worker {self.gpus_per_worker:g}: must not be negative")
        if self.address is not None and not self.address.strip():
            raise UsageError("--address: give auto, HOST:PORT or ray://HOST:PORT")

    @contextmanager
    def keep_workers(self, most: int | None = None) -> Iterator["RayEngine"]:
        """An engine whose workers start now and serve every run made with it inside the block
        (`most`: start no more workers than this, e.g. the files to come).

        A run with a plain engine starts its workers and ends them after it (what the command
        line does: a few seconds per run, new processes importing torch). A program that runs
        several batches or evaluations in a row pays that once here; the workers start at once,
        while the caller goes on (loading its model, checking its inputs), and they are ended
        when the block ends. Between runs a worker holds no model and no audio, but it keeps the
        CPUs and GPUs Ray gave it: other jobs on the cluster cannot use them until the block
        ends. Ray is joined or started as a run would (and a Ray instance started here lasts
        the block). The command line uses it for its one run: the workers start before the
        driver imports torch, checks the inputs and loads the model, rather than after.

            with RayEngine(workers=4).keep_workers() as engine:
                for folder in folders:
                    separate_folder(folder, model, output, engine=engine)
        """
        if self.kept is not None:
            yield self
            return
        ray = import_ray()
        with self._session(ray):
            workers = self._start_workers(ray, self._worker_count(ray, most))
            try:
                yield replace(self, kept=tuple(workers))
            finally:
                for worker in workers:
                    ray.kill(worker, no_restart=True)

    # ---- the two kinds of run --------------------------------------------------------------

    def load(self, model: ModelChoice) -> Separator:
        """The model, loaded here on the CPU (weights fetched and verified once, on the driver);
        each worker moves it to its own device."""
        return replace(model, device="cpu").load()

    def separate(self, separator: Separator, work: Sequence[tuple[Path, str]], output: OutputOptions,
                 settings: Settings) -> Iterator[FileResult]:
        """`runs.separate_one` for each (path, track), one actor task each; results as they finish.
        A file whose worker died on every try is a failed result."""
        from .pipeline import FileResult

        self.check_device(settings.device)
        items = [(Path(path), track, output, settings) for path, track in work]
        for (path, _, _, _), value in self._run(separator, "separate", items):
            if isinstance(value, WorkerLost):
                yield FileResult(path, "failed", error=f"{path}: {value.reason}")
            else:
                yield value

    def evaluate(self, separator: Separator, cells: Sequence[Cell], job: CellJob
                 ) -> Iterator[tuple[Cell, CellOutcome]]:
        """`CellJob.compute` for each cell, one actor task each; (cell, outcome) as they finish.
        A cell whose worker died on every try stops the run (ClusterError)."""
        self.check_device(job.settings.device)
        items = [(cell, job) for cell in cells]
        for (cell, _), value in self._run(separator, "evaluate", items):
            if isinstance(value, WorkerLost):
                raise ClusterError(f"{cell.track.name} @ {cell.rate} Hz, {cell.resampler}: {value.reason}; the "
                                   f"results stored so far stay stored, and a rerun resumes from them")
            yield cell, value

    # ---- scheduling ------------------------------------------------------------------------

    def check_device(self, device: str) -> None:
        """A --device the workers cannot have with these resources is a UsageError."""
        wants_gpu = device.startswith("cuda")
        if wants_gpu and self.gpus_per_worker == 0:
            raise UsageError(f"--device {device} with --engine ray: give --gpus-per-worker (e.g. 1) so that Ray "
                             f"gives each worker a GPU")
        if device in ("cpu", "mps") and self.gpus_per_worker > 0:
            raise UsageError(f"--gpus-per-worker {self.gpus_per_worker:g} with --device {device}: the workers "
                             f"would hold GPUs they do not use; use --device auto or cuda")

    def _run(self, separator: Separator, method: str, items: list[tuple]) -> Iterator[tuple[tuple, Any]]:
        """Call `SeparationWorker.<method>(index, *item)` once per item on a pool of workers
        (new ones, ended after the run, or those of `keep_workers`, left idle after it); yields
        (item, value) as each finishes, value a `WorkerLost` when the item's worker died on
        every try. An error raised by the work itself (SfsepError, OSError, ...) stops the
        workers and is raised here, as the local engine raises it."""
        if not items:
            return
        ray = import_ray()
        from ray.exceptions import RayActorError, RayTaskError
        from ray.util import ActorPool

        with self._session(ray):
            if self.kept is not None:
                workers = list(self.kept[:len(items)])
            else:
                workers = self._start_workers(ray, self._worker_count(ray, len(items)))
            # Each task names the model in the object store (in a list: the worker takes it from
            # there itself, once, and again after a restart). Not a constructor argument: Ray
            # warns on stderr about those when the actor may restart.
            model = [ray.put(separator)]
            pool = ActorPool(workers)
            running: dict[Any, int] = {}  # the tasks handed to a worker and not yet returned: ref -> index

            def submit(worker, index: int):
                ref = getattr(worker, method).remote(model, index, *items[index])
                running[ref] = index
                return ref

            def returned(index: int) -> None:
                for ref, running_index in list(running.items()):
                    if running_index == index:
                        del running[ref]

            try:
                for index in range(len(items)):
                    pool.submit(submit, index)
                reported: set[int] = set()
                while pool.has_next():
                    try:
                        index, value = pool.get_next_unordered()
                    except RayTaskError as error:  # the work raised: the run stops, as it does locally
                        raise _cause(error) from None
                    except RayActorError as error:
                        # The pool does not say which task it was: it is the one (or, when several
                        # workers died at once, one of those) now finished with this error.
                        for index in _lost(ray, running, RayActorError):
                            returned(index)
                            reported.add(index)
                            yield items[index], WorkerLost(_died(error))
                        continue
                    returned(index)
                    reported.add(index)
                    yield items[index], value
                for index in range(len(items)):  # every worker gone for good (Ray dropped them all)
                    if index not in reported:
                        yield items[index], WorkerLost("no Ray worker was left to run it")
            except GeneratorExit:  # the caller stopped listening (its own error or Ctrl-C)
                for _ in self._stop(ray, workers, running, items, hand_over=False):
                    pass
                raise
            except BaseException:  # Ctrl-C here, or an error of the work
                yield from self._stop(ray, workers, running, items, hand_over=True)
                raise
            finally:
                if self.kept is None:
                    for worker in workers:
                        ray.kill(worker, no_restart=True)
                else:
                    _idle(ray, workers)

    def _stop(self, ray, workers: list, running: dict, items: list[tuple], hand_over: bool
              ) -> Iterator[tuple[tuple, Any]]:
        """After Ctrl-C or an error: every worker stops at its next chunk (its staged files are
        removed); the results that still finish are handed over (`hand_over`: the caller still
        listens); the items not started are dropped."""
        from ray.exceptions import RayError

        for worker in workers:
            worker.stop.remote()
        waiting = list(running)
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1, timeout=STOP_SECONDS)
            if not ready:
                log.warning(f"ray: {len(waiting)} worker(s) did not stop within {STOP_SECONDS:g} s; ending them")
                return
            try:
                index, value = ray.get(ready[0])
            except RayError:
                continue
            if value is not None and hand_over:
                yield items[index], value

    @contextmanager
    def _session(self, ray) -> Iterator[None]:
        """Ray as the caller left it, else joined at `address`, else a local instance for this
        run; what was started here is shut down after it."""
        if ray.is_initialized():
            _route_ray_notices()
            yield
            return
        options: dict[str, Any] = dict(logging_level=logging.ERROR, log_to_driver=False)
        if self.address not in (None, "auto"):
            _check_reachable(self.address)  # Ray itself retries an address nobody answers for minutes
        if self.address is None:
            cpus = os.cpu_count() or 1
            if self.workers is not None:
                cpus = max(1, math.ceil(self.workers * self.cpus_per_worker))
            options.update(num_cpus=cpus, include_dashboard=False)
        try:
            ray.init(address=self.address, **options)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError, ... for a bad address
            where = f"--address {self.address}" if self.address else "a local Ray instance"
            raise ClusterError(f"{where}: Ray could not start or connect ({str(exc).splitlines()[0]}); start a "
                               f"cluster with `ray start --head` and pass its address, or leave --address "
                               f"out to run on this machine") from None
        _route_ray_notices()
        try:
            yield
        finally:
            ray.shutdown()

    def _start_workers(self, ray, count: int) -> list:
        """`count` new workers (Ray starts their processes while the caller goes on)."""
        log.debug("ray: starting %d worker(s) of %g CPU, %g GPU", count, self.cpus_per_worker, self.gpus_per_worker)
        worker_class = ray.remote(SeparationWorker).options(
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker, max_restarts=-1,
            max_task_retries=TASK_RETRIES, max_concurrency=2)  # 2: `stop` runs beside the work
        threads = max(1, int(self.cpus_per_worker))
        return [worker_class.remote(threads, os.environ.get(KILL_HOOK)) for _ in range(count)]

    def _worker_count(self, ray, tasks: int | None) -> int:
        """--workers, or as many as the cluster's resources hold; never more than the tasks (when
        given), and never more than the cluster can ever place (a worker that cannot be placed
        would hold its share of the tasks forever)."""
        resources = ray.cluster_resources()
        fits = int(resources.get("CPU", 0) // self.cpus_per_worker)
        if self.gpus_per_worker > 0:
            gpus = resources.get("GPU", 0)
            if gpus < self.gpus_per_worker:
                raise ClusterError(f"--gpus-per-worker {self.gpus_per_worker:g}: the Ray cluster has "
                                   f"{gpus:g} GPU(s)")
            fits = min(fits, int(gpus // self.gpus_per_worker))
        if fits < 1:
            raise ClusterError(f"--cpus-per-worker {self.cpus_per_worker:g}: the Ray cluster has "
                               f"{resources.get('CPU', 0):g} CPU(s)")
        count = fits if self.workers is None else self.workers
        if count > fits:
            log.warning(f"--workers {count}: the Ray cluster holds {fits} worker(s) of {self.cpus_per_worker:g} "
                        f"CPU and {self.gpus_per_worker:g} GPU; running {fits}")
            count = fits
        return max(1, count if tasks is None else min(count, tasks))


def _idle(ray, workers: list) -> None:
    """Kept workers after a run: each lets go of the model and the audio and forgets a stop, so
    that the next run starts clean. A worker that does not answer is left as it is (the next
    run's tasks on it then fail as a dead worker's do)."""
    from ray.exceptions import GetTimeoutError, RayError

    try:
        ray.get([worker.idle.remote() for worker in workers], timeout=STOP_SECONDS)
    except (RayError, GetTimeoutError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        log.warning(f"ray: a kept worker did not become idle ({first})")


def _check_reachable(address: str) -> None:
    """A ClusterError at once when nothing accepts a connection at HOST:PORT (`ray://` or not)."""
    import socket

    where = address.split("://", 1)[-1]
    host, _, port = where.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--address {address}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_SECONDS).close()
    except OSError as exc:
        raise ClusterError(f"--address {address}: no Ray cluster answers there ({exc.strerror or exc}); start one "
                           f"with `ray start --head` (it prints its address), or leave --address out to run on "
                           f"this machine") from None


@dataclass(frozen=True)
class WorkerLost:
    """An item whose worker process died on every try."""

    reason: str


def _died(error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return (f"the Ray worker running it died {TASK_RETRIES + 1} times (Ray's max_task_retries {TASK_RETRIES}); "
            f"last: {first}")


def _cause(error) -> BaseException:
    """The exception the work raised on the worker, as the local engine would have raised it."""
    cause = getattr(error, "cause", None)
    return cause if isinstance(cause, BaseException) else error


def _lost(ray, running: dict, kind: type) -> list[int]:
    """The indexes of the running tasks that finished with an error of `kind` (a worker that died
    on every try)."""
    if not running:
        return []
    ready, _ = ray.wait(list(running), num_returns=len(running), timeout=0)
    lost = []
    for ref in ready:
        try:
            ray.get(ref, timeout=0)
        except kind:
            lost.append(running[ref])
        except Exception:  # noqa: BLE001 (an error of the work: the pool raises it in its turn)
            pass
    return lost


def _route_ray_notices() -> None:
    """Ray's driver prints the cluster's notices ("A worker died or was killed ...", "Task ...
    failed. There are 2 retries remaining ...") to stdout, where they would break `--json`
    lines. They go to the "sfsep" log instead, one line each (the first sentence): warnings on
    stderr. Ray offers no option for this; the hook is its print function, looked up at each
    call (pinned by the sfsep[ray] extra), and left alone if it is not there."""
    from ray._private import worker as ray_worker

    original: Callable | None = getattr(ray_worker, "print_to_stdstream", None)
    if original is None or getattr(original, "sfsep_routed", False):
        return

    def to_log(data, *args, **kwargs):
        if data.get("pid") != "raylet":
            return original(data, *args, **kwargs)
        for line in data.get("lines", []):
            text = " ".join(str(line).split())
            if text:
                logging.getLogger("sfsep").warning("ray: " + text.split(". ")[0].rstrip(".") + ".")

    to_log.sfsep_routed = True
    ray_worker.print_to_stdstream = to_log


class SeparationWorker:
    """A Ray actor (the engine wraps it with `ray.remote`): the separator, taken from the object
    store by its first task and moved to this worker's device, and the work run on it, one task
    per file or cell. `stop()` arrives on a second thread while a file or cell runs; that work
    then ends at its next chunk, as the local engine's threads do after Ctrl-C, and returns
    (index, None)."""

    def __init__(self, threads: int, kill_marker: str | None = None):
        import torch

        from . import runs  # noqa: F401 (what the tasks run, imported now: while the worker starts)
        from .evaluate import runner  # noqa: F401

        torch.set_num_threads(threads)
        self.kill_marker = kill_marker
        self.stopping = threading.Event()
        self.loaded: tuple[Any, str, Separator] | None = None  # (the model's object ref, device, the separator there)
        self.audio: TrackAudio | None = None  # eval: the last track's audio, for its next cells

    def _separator(self, model: list, device: str) -> Separator:
        import ray

        if self.loaded is None or self.loaded[:2] != (model[0], device):
            self.loaded = None  # the last run's model goes before the next one comes
            self.loaded = model[0], device, ray.get(model[0]).on_device(device)
        return self.loaded[2]

    def separate(self, model: list, index: int, path: Path, track: str, output: OutputOptions, settings: Settings
                 ) -> tuple[int, FileResult | None]:
        from .runs import separate_one

        separator = self._separator(model, settings.device)
        try:
            return index, separate_one(path, separator, output, settings, track, progress=self._between_chunks)
        except KeyboardInterrupt:
            return index, None

    def evaluate(self, model: list, index: int, cell: Cell, job: CellJob) -> tuple[int, CellOutcome | None]:
        from .evaluate.runner import TrackAudio

        separator = self._separator(model, job.settings.device)
        if self.audio is None or self.audio.track != cell.track:
            self.audio = None
            self.audio = TrackAudio(cell.track, job.targets)
        try:
            return index, job.compute(cell, separator, self.audio, self._between_chunks)
        except KeyboardInterrupt:
            return index, None

    def stop(self) -> None:
        self.stopping.set()

    def idle(self) -> None:
        """Between the runs of `RayEngine.keep_workers`: no model, no audio, no stop pending."""
        self.loaded = self.audio = None
        self.stopping.clear()
        gc.collect()

    def _between_chunks(self, done: int, total: int) -> None:
        if self.stopping.is_set():
            raise KeyboardInterrupt
        if self.kill_marker:
            _die_once(self.kill_marker)


def _die_once(marker: str) -> None:
    """The test-only fault (`SFSEP_TEST_KILL_WORKER`): the first caller creates `marker` and kills
    its own process at once, as the OOM killer or a segfault would (no cleanup runs)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        return
    os._exit(70)
