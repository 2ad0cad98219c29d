"""How the loops run: the device, the seeds, the CPU threads, and files written all at once.

One small module that every loop (pretraining, downstream, the teacher, notebooks) shares:

* ``resolve_device("auto")`` -- cuda if a GPU is visible, else cpu;
* ``seed_everything(seed)`` -- Python, NumPy and torch generators;
* ``torch_threads(n)`` -- a block on ``n`` intra-op threads, restored afterwards (tiny matrices
  are many times faster on one thread of a busy 2-core machine than spread over two);
* ``check_resumable(saved, config, ignored, checkpoint)`` -- a resume continues the same run;
* ``atomic_path(path)`` / ``save_checkpoint_atomic(state, path)`` -- write to a temporary file in
  the same folder, then rename: a crash never leaves a truncated file where a reader would look,
  and the temporary files a killed process left behind are removed by the next write into the folder
  (``remove_stale_temporaries``);
* ``read_checkpoint(path, what)`` / ``checkpoint_kind(state)`` -- ``torch.load`` with errors that name
  the file, and which command wrote a checkpoint (pretraining or downstream);
* ``prepare_openblas()`` -- MinkowskiEngine's OpenBLAS on one thread and on the CPU's own kernels
  (called by ``models/minkunet.py`` before the library loads);
* ``machine()`` -- the CPU a run timed itself on, and the kernels its OpenBLAS runs (times, and
  the last bits of floats, depend on both);
* the command lines' bad input: ``CommandLineParser`` (argparse, one-line errors), ``InputError``
  (exit status 2 after one line ``error: ...`` on stderr, printed by ``reports_input_errors``) and
  ``override_fields`` / ``check_field_types`` (``--set FIELD=VALUE`` type-checked against the
  dataclass fields, nested ones included, before a config's own checks).

torch is imported inside the functions that use it, so the dataset generators' command lines start
without it.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import functools
import json
import math
import os
import random
import re
import subprocess
import sys
import time
import types
import typing
from pathlib import Path
from typing import Optional

import numpy as np


if typing.TYPE_CHECKING:
    import torch


def machine() -> dict:
    """The CPU this process runs on: ``{"cpu": model name, "cpu_capability": the widest vector
    instructions torch's kernels use here ("AVX2", "AVX512", ...), "cores": visible cores,
    "blas_kernels": the kernels of MinkowskiEngine's OpenBLAS (None before it is imported)}``.

    Why it is recorded: the same seed gives bit-identical results on the same kind of CPU with the
    same OpenBLAS kernels, but the float kernels differ between, say, AVX2 and AVX-512 machines,
    OpenBLAS's generic and SkylakeX kernels, or an Intel and an AMD CPU of the same vector width (the
    model name tells them apart; MKL inside torch takes another code path on AMD), so two such runs
    agree only to float rounding at first and then drift apart; step times differ between machines
    too (docs/results.md, "Time, and which machine makes which bits")."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # not Linux
        import platform

        cpu = platform.processor() or cpu
    import torch

    # asked only once MinkowskiEngine has loaded OpenBLAS: loading it here would fix its kernels early
    blas = openblas_kernels() if "MinkowskiEngine" in sys.modules else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            "blas_kernels": blas}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> ``cuda`` if a GPU is visible, else ``cpu``; any other name as ``torch.device``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int):
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and CUDA)."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextlib.contextmanager
def torch_threads(n: Optional[int]):
    """Run the block with ``n`` torch intra-op threads (None: unchanged), then restore the count."""
    if n is None:
        yield
        return
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class ResumeError(ValueError):
    """A resumed run would not continue the saved one (:func:`check_resumable`)."""


def check_resumable(saved, config, ignored, checkpoint) -> None:
    """A resumed run must continue the saved one: raise ResumeError (a ValueError) naming every
    dataclass field of ``config`` that differs from ``saved`` (the checkpoint's config), except the
    ``ignored`` ones."""
    differs = [f.name for f in dataclasses.fields(config)
               if f.name not in ignored and getattr(saved, f.name) != getattr(config, f.name)]
    if differs:
        raise ResumeError(f"cannot resume {checkpoint}: config fields differ from the checkpoint: {differs}")


# ------------------------------------------------------------------------------------------ atomic writes
# ``atomic_path``'s temporary names: ``.<stem>.tmp-<pid><suffix>`` (the writer's process id)
_TEMPORARY = re.compile(r"^\..+\.tmp-(\d+)(\.[^.]*)?$")
# A temporary is removed only when no write has touched it for this long: a writer on another machine
# sharing the folder has a process id that means nothing here, but it writes its file continuously.
STALE_AFTER_SECONDS = 60.0
_swept: dict = {}  # folder -> when this process last cleared it of stale temporaries


def _process_start(pid: int) -> Optional[float]:
    """When process ``pid`` started (seconds since the epoch), from Linux's /proc; None elsewhere."""
    try:
        ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _writer_gone(pid: int, modified: float) -> bool:
    """True when no running process can be the writer of a temporary file named for ``pid`` and last
    modified at ``modified``: no process has that id, or the one that has it started afterwards (the id
    was reused, as after a container restart, this process included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except (OverflowError, OSError):  # no such process id can exist
        return True
    started = _process_start(pid)
    return started is not None and started > modified + 2.0  # /proc's boot time has 1 s resolution


def remove_stale_temporaries(folder, older_than: Optional[float] = None) -> list:
    """Delete the temporary files of :func:`atomic_path` in ``folder`` whose writer is gone (a process
    killed in the middle of a save, e.g. by SIGKILL or the OOM killer, cannot delete its own) and that
    nothing has written for ``older_than`` seconds (None: ``STALE_AFTER_SECONDS``); the temporaries of
    writers still running are left alone. Returns the removed paths."""
    removed, now = [], time.time()
    older_than = STALE_AFTER_SECONDS if older_than is None else older_than
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False):
            continue
        try:
            modified = entry.stat(follow_symlinks=False).st_mtime
            if now - modified >= older_than and _writer_gone(int(match.group(1)), modified):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except FileNotFoundError:  # removed meanwhile (by another process's sweep)
            pass
    return removed


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path`` (same suffix); when the block succeeds it is renamed
    onto ``path`` in one step, when it fails it is deleted. The folder is created if needed.

    A write also removes the temporaries that killed writers left in the folder
    (:func:`remove_stale_temporaries`), so an interrupted save does not stay for good: at the first
    write of a process into the folder, and again at a write ``STALE_AFTER_SECONDS`` later (not at
    every write: a cache folder may hold 10^5 files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    folder, now = os.path.realpath(path.parent), time.time()
    if now - _swept.get(folder, -math.inf) >= STALE_AFTER_SECONDS:
        remove_stale_temporaries(folder)
        _swept[folder] = now
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_checkpoint_atomic(state: dict, path):
    """``torch.save(state, path)`` through :func:`atomic_path`."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


# ------------------------------------------------------------------------------------------ reading checkpoints
class CheckpointError(ValueError):
    """A checkpoint file that is missing, unreadable (truncated, corrupt) or of the wrong kind; the
    message names the file."""


def read_checkpoint(path, what: str = "checkpoint") -> dict:
    """``torch.load(path, map_location="cpu", weights_only=True)``, a dict, or CheckpointError naming
    the file (``what`` names what was expected, e.g. "downstream checkpoint")."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}" if not path.exists() else f"{what} {path} is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 -- zip, unpickling and EOF errors of a damaged file
        first = (str(e).strip().splitlines() or [""])[0].split(". ")[0]  # torch's first sentence
        raise CheckpointError(f"cannot read {what} {path}: the file is truncated, corrupt or not a torch "
                              f"checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a {what}: it holds a {type(state).__name__}, not a dict")
    return state


def checkpoint_kind(state) -> Optional[str]:
    """Which command wrote a checkpoint dict: ``"pretraining"`` (``python -m cmcr_lite.pretrain``:
    a ``model3d`` trunk, a config with ``method``), ``"downstream"`` (``python -m cmcr_lite.downstream``:
    a config with ``mode`` and ``label_fraction``), else None (e.g. a plain state_dict)."""
    if not isinstance(state, dict):
        return None
    config = state.get("config")
    config = config if isinstance(config, dict) else {}
    if "model3d" in state or "method" in config:
        return "pretraining"
    if "mode" in config and "label_fraction" in config:
        return "downstream"
    return None


# ------------------------------------------------------------------------------------------ command lines
USAGE_ERROR = 2  # the exit status of a command given bad input (argparse's own)


def one_line(message) -> str:
    """``message`` as one line that starts with ``error: `` (its lines joined by spaces)."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    return line if line.startswith("error:") else f"error: {line}"


class InputError(SystemExit):
    """A command line's bad input. ``str(e)`` is one line ``error: <what is wrong>`` (naming the field,
    value or file and what was expected); raised out of a ``main`` wrapped in
    :func:`reports_input_errors`, the line goes to stderr and the process exits with status 2."""

    def __init__(self, message):
        self.line = one_line(message)
        super().__init__(USAGE_ERROR)

    def __str__(self) -> str:
        return self.line


def reports_input_errors(main):
    """Decorate a command's ``main``: an :class:`InputError` prints its one line on stderr (a caller of
    ``main(argv)`` sees it too) and leaves as SystemExit with status 2."""
    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except InputError as e:
            print(str(e), file=sys.stderr, flush=True)
            raise
    return wrapper


class CommandLineParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors (an unparsable or missing option, a bad choice)
    are :class:`InputError` lines, ``error: argument --epochs: invalid int value: 'x'``, not the
    usage text plus a message."""

    def error(self, message):
        raise InputError(f"{message} (see {self.prog} --help)")


def _field_types(cls) -> dict:
    """{field name: resolved annotation} of a dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints.get(f.name, typing.Any) for f in dataclasses.fields(cls)}


def _dataclass_in(tp):
    """The dataclass ``tp`` is (or is Optional of), else None."""
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a) and isinstance(a, type)]
        return found[0] if found else None
    return None


def describe_type(tp) -> str:
    """What a JSON value of annotation ``tp`` must be, in words ("an integer", "a number or null")."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in args)
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return f"a JSON object of {tp.__name__} fields"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
              type(None): "null", tuple: "a list", list: "a list"}
    if tp in simple:
        return simple[tp]
    if origin in (tuple, list):
        items = [a for a in args if a is not Ellipsis]
        if items and all(a == items[0] for a in items):
            plural = {int: "integers", float: "numbers", str: "strings", bool: "true/false values"}
            return f"a list of {plural.get(items[0], describe_type(items[0]))}"
        return "a list"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    """A value that does not fit its field's annotation (internal to :func:`_fit`)."""


def _fit(tp, value, text, name, where=""):
    """``value`` checked against annotation ``tp`` (field ``name``): returned as the config should hold
    it (an integral float for an int field as int; for a str field given a number or true/false, the
    ``text`` typed), or _Mismatch. A dataclass-valued field needs a dict, checked field by field."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return value
    if origin in (typing.Union, types.UnionType):
        arms = sorted(args, key=lambda a: a is str)  # the text form last: "32" is the int 32 first
        for arm in arms:
            try:
                return _fit(arm, value, text, name, where)
            except _Mismatch:
                pass
        raise _Mismatch
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        if text is not None and isinstance(value, (bool, int, float)):
            return text  # dataroot=2024 or version=1.0: the text typed, not the JSON number
        raise _Mismatch
    if tp in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        items = [a for a in args if a is not Ellipsis]
        if not items:
            return value
        if Ellipsis not in args and len(items) != len(value):
            raise _Mismatch
        kinds = items if Ellipsis not in args else items * len(value)
        return [_fit(k, v, None, name, where) for k, v in zip(kinds, value)]
    sub = _dataclass_in(tp)
    if sub is not None:
        if isinstance(value, sub):
            return value
        if not isinstance(value, dict):
            raise _Mismatch
        return check_field_types(sub, value, prefix=f"{name}.", where=where)
    return value  # an annotation this checker does not know: left to the config's own checks


def _fitted(tp, value, text, name: str, where: str):
    try:
        return _fit(tp, value, text, name, where)
    except _Mismatch:
        shown = value if text is None else text
        raise InputError(f"{where}{name} must be {describe_type(tp)}, got {shown!r}") from None


def check_field_types(cls, values: dict, prefix: str = "", where: str = "") -> dict:
    """``values`` (a dict of ``cls``'s fields, e.g. a config read from JSON) type-checked against the
    dataclass ``cls``'s annotations, nested dataclass fields included: a copy with ints for integral
    floats of int fields, or InputError ``<where><prefix><field> must be <type>, got <value>``. An
    unknown field is an InputError too when nested (``prefix``); at the top it is left to the
    config's ``from_dict``."""
    types_ = _field_types(cls)
    out = dict(values)
    for key, value in values.items():
        if key not in types_:
            if prefix:
                raise InputError(f"{where}{prefix}{key}: no such config field (fields of {cls.__name__}: "
                                 f"{', '.join(types_)})")
            continue
        out[key] = _fitted(types_[key], value, None, f"{prefix}{key}", where)
    return out


def override_fields(base: dict, cls, items, option: str = "--set") -> dict:
    """Apply ``["FIELD=VALUE", ...]`` (dotted names reach into dataclass-valued fields, e.g.
    ``backbone.planes=[8,8,8,8,8,8,8,8]`` or ``pipeline.slic.n_segments=30``) to ``base``, the dict of a
    ``cls`` config, in place. Each VALUE is read as JSON, else kept as the text, and must fit the
    field's annotation (:func:`describe_type`) before the config's own checks see it: a bad name,
    a value of the wrong type, or a non-object for a dataclass-valued field is an InputError naming
    the field and the value."""
    for item in items or []:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise InputError(f"{option} {item!r}: expected FIELD=VALUE (a {cls.__name__} field)")
        owner, target = cls, base
        *parents, leaf = key.split(".")
        for depth, name in enumerate(parents):
            where = ".".join(parents[:depth + 1])
            tp = _field_types(owner).get(name)
            if tp is None:
                raise InputError(f"{option} {key}: no such config field ({where!r} is not a field of {owner.__name__})")
            sub = _dataclass_in(tp)
            if sub is None:
                raise InputError(f"{option} {key}: no such config field ({where} is {describe_type(tp)}, "
                                 f"not a group of fields)")
            if not isinstance(target.get(name), dict):
                if isinstance(target.get(name), sub):
                    target[name] = dataclasses.asdict(target[name])
                elif target.get(name) is None:
                    target[name] = {}
                else:
                    raise InputError(f"{option} {key}: {where} must be {describe_type(tp)}, "
                                     f"got {target.get(name)!r}")
            owner, target = sub, target[name]
        tp = _field_types(owner).get(leaf)
        if tp is None:
            raise InputError(f"{option} {key}: no such config field (not a field of {owner.__name__})")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        target[leaf] = _fitted(tp, value, text, key, f"{option} {item}: ")
    return base


def device_problem(name: str) -> Optional[str]:
    """Why a config's ``device`` cannot run on this machine (a name torch does not know, a GPU that
    is not visible), as a sentence, or None when it can."""
    import torch

    try:
        device = resolve_device(name)
    except (RuntimeError, ValueError) as e:
        return f"device={name!r} is not a device torch knows ({e})"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return f"device={name!r} but no CUDA GPU is visible here; use device=auto or device=cpu"
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"device={name!r} but only {torch.cuda.device_count()} CUDA GPU(s) are visible"
    return None


# ------------------------------------------------------------------------------------------ OpenBLAS
# MinkowskiEngine's CPU convolutions are OpenBLAS matrix products, one per kernel offset. Two settings
# matter, and both must be made before the library loads (models/minkunet.py calls prepare_openblas()
# just before it imports MinkowskiEngine; importing cmcr_lite alone does neither):
# * threads: Debian's pthread OpenBLAS keeps its workers busy-waiting between those small calls,
#   starving torch's own threads, so it runs on one thread unless OPENBLAS_NUM_THREADS is set;
# * kernels: Debian's OpenBLAS 0.3.21 picks them by CPU model and, on a CPU newer than itself, falls
#   back to its generic SSE3 "Prescott" ones (measured by benchmarks/openblas_kernels.py); then the
#   kernels OpenBLAS gives recognised CPUs of the same kind are named instead, unless
#   OPENBLAS_CORETYPE is set.
OPENBLAS_LIBRARY = "libopenblas.so.0"  # the library MinkowskiEngine's CPU backend links (Debian's libopenblas0)


def openblas_kernels(library: str = OPENBLAS_LIBRARY) -> Optional[str]:
    """The kernels OpenBLAS runs in this process ("Haswell", "SkylakeX", "Prescott", ...), loading
    the library if it is not loaded yet; None if there is no such library."""
    try:
        get = ctypes.CDLL(library).openblas_get_corename
    except (OSError, AttributeError):
        return None
    get.restype = ctypes.c_char_p
    return get().decode()


def kernels_for_cpu(flags: set, detected: Optional[str]) -> Optional[str]:
    """The OpenBLAS core type to force, given the CPU's ``flags`` (from /proc/cpuinfo) and the
    kernels OpenBLAS ``detected`` by itself: None unless it fell back to "Prescott" on a CPU that
    can run better ones. "SkylakeX" (AVX-512) and "Haswell" (AVX2 + FMA) are the kernels OpenBLAS
    gives the CPUs of those kinds that it does recognise."""
    if detected != "Prescott":
        return None
    if {"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        return "SkylakeX"
    if {"avx2", "fma"} <= flags:
        return "Haswell"
    return None


_ASK_OPENBLAS = """
import ctypes
try:
    get = ctypes.CDLL({library!r}).openblas_get_corename
except (OSError, AttributeError):
    raise SystemExit(0)
get.restype = ctypes.c_char_p
print(get().decode())
"""


def detected_openblas_kernels(library: str = OPENBLAS_LIBRARY) -> Optional[str]:
    """The kernels OpenBLAS picks by itself on this CPU, asked of a child Python process (about
    30 ms; the standard library only) with ``OPENBLAS_CORETYPE`` unset, so that this process's
    library stays unloaded (OpenBLAS reads the variable once, when it loads). None if there is no
    such library."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    try:
        asked = subprocess.run([sys.executable, "-c", _ASK_OPENBLAS.format(library=library)], env=env,
                               capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    name = asked.stdout.strip() if asked.returncode == 0 else ""
    return name or None


def cpu_flags() -> set:
    """The CPU's feature flags ("avx2", "avx512f", ...) from /proc/cpuinfo; empty if not Linux."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())


def choose_openblas_kernels() -> Optional[str]:
    """Set ``OPENBLAS_CORETYPE`` for this process's OpenBLAS (not loaded yet) and its children when
    OpenBLAS would fall back to its generic kernels on this CPU (:func:`kernels_for_cpu`).

    Returns the core type set, or None: already set by the user, OpenBLAS already loaded, its own
    choice kept, not Linux, or no OpenBLAS."""
    if "OPENBLAS_CORETYPE" in os.environ or "MinkowskiEngine" in sys.modules:
        return None
    chosen = kernels_for_cpu(cpu_flags(), detected_openblas_kernels())
    if chosen:
        os.environ["OPENBLAS_CORETYPE"] = chosen
    return chosen


def limit_openblas_threads(n: int = 1) -> bool:
    """Make OpenBLAS (used by MinkowskiEngine on CPU) use ``n`` threads.

    Sets ``OPENBLAS_NUM_THREADS`` for libraries loaded later and, if MinkowskiEngine is already
    imported, calls ``openblas_set_num_threads`` on the loaded library. Returns True if the running
    library was reached (or not loaded yet), False if it could not be found.
    """
    os.environ["OPENBLAS_NUM_THREADS"] = str(n)
    if "MinkowskiEngine" not in sys.modules:
        return True
    for name in (OPENBLAS_LIBRARY, ctypes.util.find_library("openblas")):
        if not name:
            continue
        try:
            ctypes.CDLL(name).openblas_set_num_threads(int(n))
            return True
        except (OSError, AttributeError):
            continue
    return False


def prepare_openblas():
    """Before MinkowskiEngine loads OpenBLAS: one OpenBLAS thread unless ``OPENBLAS_NUM_THREADS`` is
    set, and the CPU's own kernels where OpenBLAS would fall back to its generic ones
    (:func:`choose_openblas_kernels`)."""
    if "OPENBLAS_NUM_THREADS" not in os.environ:
        limit_openblas_threads(1)
    choose_openblas_kernels()
