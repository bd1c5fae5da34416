"""Crash-safe, resumable writing of groups into hloc's h5 files.

An HDF5 file modified in place can be left unreadable by a killed process. So
results never go into the target file while a step runs: they are written, in a
background thread, to small part files next to it (``<file>.parts/part-*.h5``).
A part file becomes visible (renamed from ``*.tmp``) only once it is complete and
flushed. At the end of the step, all parts are merged into a copy of the target
that replaces it atomically. A step killed at any point therefore leaves the
target as it was, plus complete part files that a rerun picks up: at most the
results of the last ``flush_every`` items (or ``flush_seconds``) are lost.
"""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from .. import logger
from ..errors import UserError
from .io import list_h5_names

try:
    import fcntl
except ImportError:  # not on Windows: no protection against concurrent writers
    fcntl = None  # type: ignore[assignment]

Datasets = dict[str, np.ndarray]
Attrs = dict[str, dict[str, Any]]


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _copy_group(src: h5py.File, dst: h5py.File, name: str) -> None:
    if name in dst:
        del dst[name]
    parent = name.rsplit("/", 1)[0] if "/" in name else ""
    if parent:
        dst.require_group(parent)
    src.copy(src[name], dst, name=name)


def _group_names(fd: h5py.File) -> list[str]:
    """Names of groups that directly hold datasets, in any nesting."""
    names: list[str] = []

    def visit(name: str, obj: h5py.HLObject) -> None:
        if isinstance(obj, h5py.Group) and any(
            isinstance(v, h5py.Dataset) for v in obj.values()
        ):
            names.append(name)

    fd.visititems(visit)
    return names


class H5Writer:
    """Write ``{group: {dataset: array}}`` into an h5 file safely, in the background.

    Usage::

        with H5Writer(path) as writer:
            todo = [n for n in names if n not in writer.done]
            for name in todo:
                writer.write(name, {"keypoints": kp, ...}, {"keypoints": {...}})

    Args:
        path: the target h5 file.
        overwrite: whether groups already in the target count as done.
        flush_every: items per part file.
        flush_seconds: close a part file after this time even if not full.
    """

    def __init__(
        self,
        path: Path,
        overwrite: bool = False,
        flush_every: int = 256,
        flush_seconds: float = 60.0,
    ) -> None:
        self.path = Path(path)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._queue: queue.Queue = queue.Queue(maxsize=64)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._part: h5py.File | None = None
        self._part_tmp: Path | None = None
        self._part_count = 0
        self._part_items = 0
        self._part_started = 0.0
        self.num_written = 0
        self._lock = self._acquire_lock()
        self.done: set[str] = self._find_done()

    def _acquire_lock(self) -> Any:
        """Hold an exclusive lock on ``<file>.lock`` while writing.

        The lock dies with the process (a kill releases it), so it only stops
        two live processes from writing the same file at once.
        """
        if fcntl is None:
            return None
        handle = open(self.path.with_name(self.path.name + ".lock"), "a")  # noqa: SIM115
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise UserError(
                f"Another process is writing {self.path} right now. Wait for it to "
                "finish, or write to another file."
            ) from None
        return handle

    def _release_lock(self) -> None:
        if self._lock is None:
            return
        lock_path = Path(self._lock.name)
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()
        self._lock = None
        lock_path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ state
    def _parts(self) -> list[Path]:
        if not self.parts_dir.exists():
            return []
        for tmp in self.parts_dir.glob("*.tmp"):
            tmp.unlink()  # an incomplete part from a killed run
        return sorted(self.parts_dir.glob("part-*.h5"))

    def _find_done(self) -> set[str]:
        done: set[str] = set()
        if self.path.exists() and not self.overwrite:
            done.update(list_h5_names(self.path))
        for part in self._parts():
            try:
                with h5py.File(part, "r") as fd:
                    done.update(_group_names(fd))
            except OSError:
                logger.warning("Ignoring unreadable part file %s.", part)
                part.unlink()
        if self.parts_dir.exists() and done:
            logger.info(
                "Resuming: %d items already written to %s.", len(done), self.path
            )
        return done

    # ---------------------------------------------------------------- writing
    def write(self, name: str, datasets: Datasets, attrs: Attrs | None = None) -> None:
        """Queue one group for writing (returns at once unless the queue is full)."""
        self._raise_if_failed()
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, daemon=True)
            self._thread.start()
        self._queue.put((name, datasets, attrs or {}))

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"Writing to {self.path} failed.") from self._error

    def _worker(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    self._close_part()
                    return
                if self._error is None:
                    self._write_item(*item)
            except BaseException as error:  # noqa: BLE001 - reported in the caller
                self._error = error
            finally:
                self._queue.task_done()

    def _write_item(self, name: str, datasets: Datasets, attrs: Attrs) -> None:
        if self._part is None:
            self.parts_dir.mkdir(parents=True, exist_ok=True)
            stamp = f"{time.time_ns():020d}-{os.getpid()}"  # sorts by creation
            self._part_tmp = self.parts_dir / f"part-{stamp}.h5.tmp"
            self._part = h5py.File(self._part_tmp, "w", libver="latest")
            self._part_started = time.monotonic()
            self._part_count += 1
            self._part_items = 0
        if name in self._part:
            del self._part[name]
        grp = self._part.create_group(name)
        for key, value in datasets.items():
            grp.create_dataset(key, data=value)
        for key, values in attrs.items():
            for attr, value in values.items():
                grp[key].attrs[attr] = value
        self.done.add(name)
        self.num_written += 1
        self._part_items += 1
        full = self._part_items >= self.flush_every
        if full or time.monotonic() - self._part_started > self.flush_seconds:
            self._close_part()

    def _close_part(self) -> None:
        if self._part is None:
            return
        self._part.close()
        self._part = None
        assert self._part_tmp is not None
        _fsync(self._part_tmp)
        os.replace(self._part_tmp, self._part_tmp.with_suffix(""))
        self._part_tmp = None

    # ---------------------------------------------------------------- merging
    def close(self) -> Path:
        """Finish writing and merge all parts into the target file atomically."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._raise_if_failed()
        try:
            parts = self._parts()
            if parts:
                self._merge(parts)
                shutil.rmtree(self.parts_dir, ignore_errors=True)
        finally:
            self._release_lock()
        return self.path

    def _merge(self, parts: Iterable[Path]) -> None:
        tmp = self.path.with_name(self.path.name + ".merge.tmp")
        if self.path.exists():
            shutil.copyfile(self.path, tmp)
        elif tmp.exists():
            tmp.unlink()
        with h5py.File(tmp, "a", libver="latest") as dst:
            for part in parts:
                with h5py.File(part, "r") as src:
                    for name in _group_names(src):
                        _copy_group(src, dst, name)
        _fsync(tmp)
        os.replace(tmp, self.path)

    def abort(self) -> None:
        """Stop the writer thread, keeping complete parts for a later resume."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        self._release_lock()

    def __enter__(self) -> H5Writer:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
