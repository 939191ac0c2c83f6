"""Run a loader on generated hostile inputs, each case in a worker process under a time and memory cap with its file
accesses audited; report how each case ended.

Entry point: `run_target(name, make_case, load, cases, seed, pool=)` -> `FuzzReport`; a `WorkerPool` shared by
many targets pays the worker start-up once. ``make_case(rng, folder)`` writes one
case's files into its own empty ``folder`` and returns the arguments of ``load``; both are module-level functions
(workers import them by name). A case passes when ``load`` returns or raises a `WanExpressError` that names a file
of the case; it fails on any other exception, on a time-out, on running out of its memory cap, and on opening or
listing anything outside its folder (``sys.addaudithook``). Every failure carries a command that replays it:
``python -m wan_express.tests.fuzz.harness MODULE:MAKE_CASE:LOAD --seed S --case I`` (in-process, with traceback).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import dataclasses
import importlib
import multiprocessing
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
import traceback
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable

from wan_express.errors import WanExpressError

MakeCase = Callable[[random.Random, Path], tuple]
Load = Callable[..., Any]

OK, OUR_ERROR, FAILURE = "ok", "our_error", "failure"
TIMEOUT_S = 10.0
MEMORY_GIB = 1.0  # on top of what the worker holds after importing torch and the loaders
CHUNK = 10  # cases per task sent to a worker: small, so no worker idles long at the end of a target
# Audited events that read the disk by path.
AUDITED = ("open", "os.listdir", "os.scandir")
# Reads outside a case that are not the case's business: the interpreter's and torch's own lazy imports and
# device probes.
_SYSTEM_ROOTS = ("/proc/", "/sys/", "/dev/", "/etc/ld.so", "/usr/lib", "/usr/share/zoneinfo", "/lib")


@dataclasses.dataclass(frozen=True)
class Failure:
    """One failed case: its index, what went wrong (exception class or ``timeout`` / ``memory`` / ``opened``)."""

    index: int
    kind: str
    detail: str
    reproduce: str


@dataclasses.dataclass
class FuzzReport:
    """Counts by outcome (``ok``, ``our_error``, ``failure``), failure kinds, failures listed, wall time."""

    name: str
    seed: int
    cases: int
    counts: collections.Counter
    kinds: collections.Counter
    failures: list[Failure]
    wall_s: float

    def summary(self) -> str:
        kinds = ", ".join(f"{kind} x{n}" for kind, n in self.kinds.most_common()) or "none"
        return (f"{self.name}: {self.cases} cases (seed {self.seed}) in {self.wall_s:.1f} s: ok {self.counts[OK]}, "
                f"our error {self.counts[OUR_ERROR]}, failures {self.counts[FAILURE]} ({kinds})")


class CaseTimeout(BaseException):
    """A case ran past its time limit (BaseException, so no loader's ``except Exception`` swallows it)."""


# --- in the worker -------------------------------------------------------------------------------------------------

_case_folder: str | None = None
_violations: list[str] = []
_allowed_roots: tuple[str, ...] = ()


def _audit(event: str, args: tuple) -> None:
    if _case_folder is None or event not in AUDITED or not args:
        return
    target = args[0]
    if target is None or isinstance(target, int):
        return
    path = os.path.abspath(os.fsdecode(target))
    if path == _case_folder or path.startswith(_case_folder + os.sep) or path.startswith(_allowed_roots):
        return
    _violations.append(f"{event} {path}")
    raise PermissionError(f"fuzz case opened {path} outside its folder")


def _init_worker(memory_gib: float) -> None:
    global _allowed_roots
    import torch  # noqa: F401  (loaded before the cap: the cap is for the case)
    roots = {os.path.abspath(p) for p in sys.path if p} | {sys.prefix, sys.base_prefix, sys.exec_prefix}
    roots |= {str(Path(importlib.import_module("wan_express").__file__).resolve().parent)}
    _allowed_roots = tuple(root.rstrip(os.sep) + os.sep for root in roots) + _SYSTEM_ROOTS
    with open("/proc/self/statm") as handle:
        held = int(handle.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    limit = held + int(memory_gib * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    signal.signal(signal.SIGALRM, _on_alarm)
    sys.addaudithook(_audit)


def _on_alarm(signum, frame):
    raise CaseTimeout()


def _names_in(folder: Path, args: tuple) -> set[str]:
    names = {p.name for p in folder.rglob("*")} | {folder.name}
    names |= {Path(a).name for a in args if isinstance(a, (str, Path)) and str(a)}
    return {name for name in names if name}


def classify(load: Load, args: tuple, names: set[str], folder: Path,
             timeout_s: float = TIMEOUT_S) -> tuple[str, str, str]:
    """Run ``load(*args)`` audited for ``folder`` and under the alarm: ``(outcome, kind, detail)``. Our error
    counts only when its message holds one of ``names`` (the case's files)."""
    global _case_folder
    _violations.clear()
    _case_folder = os.path.abspath(folder)
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        load(*args)
        outcome = (OK, "", "")
    except WanExpressError as error:
        message = str(error)
        outcome = ((OUR_ERROR, type(error).__name__, "") if any(name in message for name in names)
                   else (FAILURE, "unnamed " + type(error).__name__, message[:300]))
    except CaseTimeout:
        outcome = (FAILURE, "timeout", f"over {timeout_s:g} s")
    except MemoryError:
        outcome = (FAILURE, "memory", "ran out of its memory cap")
    except Exception as error:  # noqa: BLE001  (classifying every escape is the job)
        outcome = (FAILURE, type(error).__name__, "".join(traceback.format_exception_only(error))[:300])
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        _case_folder = None
    if _violations:
        outcome = (FAILURE, "opened", "; ".join(_violations[:3]))
    return outcome


def run_case(make_case: MakeCase, load: Load, seed: int, index: int, root: str,
             timeout_s: float = TIMEOUT_S) -> tuple[str, str, str]:
    """One case in this process: ``(outcome, kind, detail)``."""
    folder = Path(root) / f"case_{index}"
    folder.mkdir()
    try:
        try:
            args = make_case(random.Random(f"{seed}/{index}"), folder)
        except Exception as error:  # noqa: BLE001  (a broken generator is reported, not fatal to the run)
            return FAILURE, "make_case " + type(error).__name__, str(error)[:300]
        return classify(load, args, _names_in(folder, args), folder, timeout_s)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_chunk(make_case: MakeCase, load: Load, seed: int, indices: list[int], root: str,
               timeout_s: float) -> list[tuple[int, str, str, str]]:
    return [(index, *run_case(make_case, load, seed, index, root, timeout_s)) for index in indices]


# --- in the parent -------------------------------------------------------------------------------------------------

def reproduce_command(make_case: MakeCase, load: Load, seed: int, index: int) -> str:
    module = "wan_express." + make_case.__module__.partition(".")[2]  # pytest may import the pack by its folder name
    return (f"python -m wan_express.tests.fuzz.harness {module}:{make_case.__name__}:{load.__name__} "
            f"--seed {seed} --case {index}")


class WorkerPool:
    """Worker processes shared by every target of a run: one forkserver preloading torch, the loaders and
    ``modules`` (the target modules), and ``workers`` processes (default: the CPUs, at most 4) each capped and
    audited once by `_init_worker`. A pool broken by a crashed worker is started again for the next target."""

    def __init__(self, modules: tuple[str, ...] = (), workers: int | None = None, memory_gib: float = MEMORY_GIB):
        self.workers = workers or min(4, os.cpu_count() or 1)
        self.memory_gib = memory_gib
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(["torch", "wan_express.loaders.dit.loader", *modules])
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None

    def executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                self.workers, mp_context=self.context, initializer=_init_worker, initargs=(self.memory_gib,))
        return self._executor

    def discard(self) -> None:
        """Drop a broken executor; the next `executor` call starts fresh workers."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_target(name: str, make_case: MakeCase, load: Load, cases: int = 1000, seed: int = 0, *,
               pool: WorkerPool | None = None, workers: int | None = None, timeout_s: float = TIMEOUT_S,
               memory_gib: float = MEMORY_GIB, first: int = 0) -> FuzzReport:
    """Run cases ``first .. first + cases - 1`` of a target in the worker processes of ``pool`` (default: a pool
    of its own with ``workers`` and ``memory_gib``) and count how they ended."""
    if pool is None:
        with WorkerPool((make_case.__module__,), workers, memory_gib) as own:
            return run_target(name, make_case, load, cases, seed, pool=own, timeout_s=timeout_s, first=first)
    started = time.perf_counter()
    counts: collections.Counter = collections.Counter()
    kinds: collections.Counter = collections.Counter()
    failures: list[Failure] = []

    def record(index: int, outcome: str, kind: str, detail: str) -> None:
        counts[outcome] += 1
        if outcome == FAILURE:
            kinds[kind] += 1
            failures.append(Failure(index, kind, detail, reproduce_command(make_case, load, seed, index)))

    indices = list(range(first, first + cases))
    chunks = [indices[i:i + CHUNK] for i in range(0, len(indices), CHUNK)]
    broken = False
    with tempfile.TemporaryDirectory(prefix=f"fuzz_{name}_") as root:
        executor = pool.executor()
        futures = {executor.submit(_run_chunk, make_case, load, seed, chunk, root, timeout_s): chunk
                   for chunk in chunks}
        for future in concurrent.futures.as_completed(futures):
            try:
                for result in future.result():
                    record(*result)
            except BrokenProcessPool:
                broken = True
                for index in futures[future]:
                    record(index, FAILURE, "worker died", "a worker process crashed in this chunk")
    if broken:
        pool.discard()
    failures.sort(key=lambda failure: failure.index)
    return FuzzReport(name, seed, cases, counts, kinds, failures, time.perf_counter() - started)


def check_target(name: str, targets: dict, pool: "WorkerPool", cases: int = 1000, seed: int = 13) -> None:
    """What CI asserts for one target: every one of ``cases`` cases ended in success or our error naming the file;
    the first failures are shown with the command that replays each."""
    make_case, load = targets[name]
    report = run_target(name, make_case, load, cases=cases, seed=seed, pool=pool)
    assert report.counts["ok"] + report.counts["our_error"] + report.counts["failure"] == cases
    shown = "\n".join(f"  case {f.index}: {f.kind}: {f.detail}\n    {f.reproduce}" for f in report.failures[:10])
    assert not report.failures, f"{report.summary()}\n{shown}"


def _replay(spec: str, seed: int, index: int) -> int:
    """Run one case in this process and print how it ended, with the traceback of an escape."""
    module_name, make_name, load_name = spec.split(":")
    module = importlib.import_module(module_name)
    make_case, load = getattr(module, make_name), getattr(module, load_name)
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / f"case_{index}"
        folder.mkdir()
        args = make_case(random.Random(f"{seed}/{index}"), folder)
        print(f"case {index} (seed {seed}): {load_name}{tuple(str(a) for a in args)}")
        try:
            load(*args)
        except WanExpressError as error:
            print(f"our error {type(error).__name__}: {error}")
        else:
            print("ok")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="MODULE:MAKE_CASE:LOAD")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--case", type=int, required=True)
    args = parser.parse_args(argv)
    return _replay(args.spec, args.seed, args.case)


if __name__ == "__main__":
    sys.exit(main())
