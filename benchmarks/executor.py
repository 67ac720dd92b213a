"""Run independent tasks on Ray (a local instance or a cluster) or in this process, one by one.

Ray does the scheduling: each task is one `ray.remote` call with its own resources
(`num_cpus` = the torch threads it uses, `num_gpus` where asked), Ray retries a task that
raised once (`max_retries=1, retry_exceptions=True`), and one failing task never stops the
others. Without Ray (or with one worker, the default of `train --seeds` and
`evaluate-drift`) the same tasks run here one after another with the same retry rule, so
results do not depend on where they ran.

With a sweep folder, every finished task leaves `tasks/KEY.json` (its result), written to a
temporary name and renamed, so the file exists only once the task is complete; `resume`
skips those tasks. A failure leaves `tasks/KEY.error.txt` (the traceback) instead.
"""
from __future__ import annotations

import json
import os
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

ATTEMPTS = 2  # a task that raises is tried once more, then reported


@dataclass(frozen=True)
class Task:
    """One unit of work: `fn()` returns a JSON-able dict. `fn` must be picklable for Ray
    (a module-level function, or a functools.partial of one, with plain arguments)."""

    key: str  # unique in a run and safe as a file name
    fn: Callable[[], dict]
    num_cpus: float = 1.0
    num_gpus: float = 0.0


@dataclass
class Outcome:
    key: str
    result: dict | None = None
    error: str | None = None
    seconds: float = 0.0
    resumed: bool = False  # taken from a completion marker of an earlier run

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Executor:
    """Where tasks run. `workers` tasks at once on Ray (locally: a Ray instance with that
    many CPUs' worth of task slots); `address` joins a running cluster; `workers=1` without
    an address runs in this process unless `use_ray` forces Ray."""

    workers: int = 1
    address: str | None = None
    folder: Path | None = None  # completion markers and error reports go to folder/tasks
    resume: bool = False
    use_ray: bool | None = None  # None: Ray when it is needed (workers > 1 or an address) and installed
    console: Console = field(default_factory=Console)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"--workers must be >= 1, got {self.workers}")

    def run(self, tasks: Sequence[Task], title: str = "tasks") -> list[Outcome]:
        """Every task's outcome, in the order given."""
        keys = [t.key for t in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"task keys must be unique: {sorted(k for k in keys if keys.count(k) > 1)}")
        done = {t.key: self._marker(t.key) for t in tasks} if self.resume else {}
        todo = [t for t in tasks if done.get(t.key) is None]
        outcomes = {k: Outcome(k, result=r, resumed=True) for k, r in done.items() if r is not None}
        if outcomes:
            self.console.print(f"resume: {len(outcomes)} of {len(tasks)} {title} already done, {len(todo)} to run")
        with self._progress() as bar:
            job = bar.add_task(title, total=len(tasks), completed=len(outcomes), failed=0)

            def finished(o: Outcome) -> None:
                outcomes[o.key] = o
                self._record(o)
                failed = sum(not x.ok for x in outcomes.values())
                bar.update(job, advance=1, failed=failed)
                if not o.ok:
                    bar.console.print(f"[red]{escape(o.key)} failed after {ATTEMPTS} attempts: "
                                      f"{escape(o.error.strip().splitlines()[-1])}[/red]")

            if todo:
                self._dispatch(todo, finished)
        return [outcomes[k] for k in keys]

    def _dispatch(self, todo: Sequence[Task], finished: Callable[[Outcome], None]) -> None:
        ray = self._ray()
        if ray is None:
            _run_here(todo, finished)
            return
        with self.ray_instance(ray, max(t.num_cpus for t in todo)):
            _run_on_ray(ray, todo, finished, self.workers if self.address is None else None)

    @contextmanager
    def ray_instance(self, ray, cpus_per_task: float) -> Iterator[None]:
        """Ray as it is if already started (a test, a notebook); else a local instance with room
        for `workers` tasks at once, or the cluster at `address`, shut down afterwards."""
        if ray.is_initialized():
            yield
            return
        if self.address is None:
            # Ray runs workers at nice 15 by default; a local sweep's tasks are the work itself, and
            # at the user's priority they compete with other jobs as the in-process run does
            os.environ.setdefault("RAY_worker_niceness", "0")
            ray.init(num_cpus=self.workers * cpus_per_task, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=self.address, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()

    # --- where ------------------------------------------------------------------------
    def _ray(self):
        """The ray module, or None to run in this process (saying what Ray would do)."""
        wanted = self.use_ray if self.use_ray is not None else (self.workers > 1 or self.address is not None)
        if not wanted:
            return None
        try:
            import ray
        except ImportError:
            if self.address is not None or self.use_ray:
                raise RuntimeError("Ray is not installed: pip install -e '.[cluster]'") from None
            self.console.print(f"[yellow]Ray is not installed (pip install -e '.\\[cluster]'): running the tasks "
                               f"in this process one after another; Ray would spread them over {self.workers} "
                               "workers[/yellow]")
            return None
        return ray

    # --- the sweep folder -------------------------------------------------------------
    def _marker(self, key: str) -> dict | None:
        path = self._path(key, ".json")
        if path is None or not path.is_file():
            return None
        return json.loads(path.read_text())

    def _record(self, o: Outcome) -> None:
        if self.folder is None or o.resumed:
            return
        if o.ok:
            self._path(o.key, ".error.txt").unlink(missing_ok=True)
            write_atomic(self._path(o.key, ".json"), json.dumps(o.result, indent=1))
        else:
            write_atomic(self._path(o.key, ".error.txt"), o.error)

    def _path(self, key: str, suffix: str) -> Path | None:
        return None if self.folder is None else self.folder / "tasks" / f"{key}{suffix}"

    def _progress(self) -> Progress:
        return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("[red]{task.fields[failed]} failed"), TimeElapsedColumn(), console=self.console)


def write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers see all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _call(fn: Callable[[], dict]) -> tuple[dict, float]:
    start = time.perf_counter()
    return fn(), time.perf_counter() - start


def _run_here(tasks: Sequence[Task], finished: Callable[[Outcome], None]) -> None:
    for t in tasks:
        error = None
        for _ in range(ATTEMPTS):
            try:
                result, seconds = _call(t.fn)
            except Exception:  # a task's failure is reported, never fatal to the others
                error = traceback.format_exc()
                continue
            finished(Outcome(t.key, result=result, seconds=seconds))
            break
        else:
            finished(Outcome(t.key, error=error))


def _run_on_ray(ray, tasks: Sequence[Task], finished: Callable[[Outcome], None], in_flight: int | None) -> None:
    """Submit every task (at most `in_flight` pending when given), collect them as they end."""
    remote = ray.remote(max_retries=ATTEMPTS - 1, retry_exceptions=True)(_call)
    queue, pending = list(tasks), {}
    while queue or pending:
        while queue and (in_flight is None or len(pending) < in_flight):
            t = queue.pop(0)
            pending[remote.options(num_cpus=t.num_cpus, num_gpus=t.num_gpus).remote(t.fn)] = t.key
        ready, _ = ray.wait(list(pending), num_returns=1)
        key = pending.pop(ready[0])
        try:
            result, seconds = ray.get(ready[0])
        except Exception as e:  # RayTaskError carries the worker's traceback in its text
            finished(Outcome(key, error=str(e)))
        else:
            finished(Outcome(key, result=result, seconds=seconds))


def run_in_order(tasks: Sequence[tuple[str, Callable[[], dict]]], executor: Executor | None = None,
                 title: str = "tasks") -> list[dict]:
    """Results of (key, fn) tasks, in order; raises if any failed (for commands that need all)."""
    executor = executor or Executor()
    outcomes = executor.run([Task(k, fn) for k, fn in tasks], title)
    failed = [o for o in outcomes if not o.ok]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(outcomes)} {title} failed; first: {failed[0].key}: "
                           f"{failed[0].error.strip().splitlines()[-1]}")
    return [o.result for o in outcomes]
