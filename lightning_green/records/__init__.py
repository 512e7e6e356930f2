"""The record schema, and its crash-safe writer and reader.

Callbacks write records; reports, the tuner and the tests read them. Nothing parses log text.

Files in a run's output directory:

* ``energy.jsonl``: one JSON object per line, appended (one unbuffered write) as each window
  ends, so a crash or kill loses at most the unfinished window; fsynced in the background every
  few seconds and at the end, so a power cut loses at most those seconds. ``kind`` says what a line is:
  ``"window"`` (:class:`WindowRecord`), ``"layer"`` and ``"layer_type"`` (:class:`LayerRecord`).
  Several runs may append to one file; every record names its ``run_id``.
* ``energy_summary.json``: totals, rewritten atomically (readers see the old file or the new one)
  after the first window, at most every 30 s after that, when a fit fails, and at the end.

What each failure loses: a kill (SIGKILL, the OOM killer, a crash) loses only the window that was
open; a line torn by a kill or a full disk is skipped by the reader with a warning, and the next
append starts on a fresh line. A full disk loses no record that was already written: the writer
keeps unwritten records in memory, warns once, and writes them when space is back. A records folder
deleted mid-run is made again, with the records already written to it.

Where each part lives: :mod:`~lightning_green.records.schema` holds the records and the file names,
:mod:`~lightning_green.records.reader` reads them back (checked), and this module writes them:
appends to ``energy.jsonl`` and whole JSON files replaced atomically. Every name is imported from
here.
"""

from __future__ import annotations

import errno
import json
import os
import threading
import time
import uuid
import warnings
from collections import deque
from dataclasses import asdict
from pathlib import Path
from typing import Any

from lightning_green.records.reader import (
    find_runs,
    iter_records,
    read_json,
    read_run,
    read_summary,
    read_windows,
    trial_energy_j,
)
from lightning_green.records.schema import (
    PARETO_FILE,
    RECORDS_FILE,
    RUN_FILE,
    SCHEMA_VERSION,
    STUDY_FILE,
    SUMMARY_FILE,
    SUPPORTED_SCHEMAS,
    TRIALS_FILE,
    EnergySummary,
    LayerRecord,
    RecordError,
    RunRecord,
    WindowRecord,
    to_json,
)

__all__ = [
    "FSYNC_EVERY_S",
    "KEEP_WRITTEN_BYTES",
    "PARETO_FILE",
    "RECORDS_FILE",
    "RUN_FILE",
    "SCHEMA_VERSION",
    "STUDY_FILE",
    "SUMMARY_FILE",
    "SUPPORTED_SCHEMAS",
    "TRIALS_FILE",
    "EnergySummary",
    "LayerRecord",
    "RecordError",
    "RecordWriter",
    "RunRecord",
    "WindowRecord",
    "find_runs",
    "iter_records",
    "read_json",
    "read_run",
    "read_summary",
    "read_windows",
    "temporary_path",
    "to_json",
    "trial_energy_j",
    "write_json_atomic",
    "write_run",
]

#: How often a writer makes its appends durable against power loss (a background fsync).
FSYNC_EVERY_S = 2.0
#: How much of what it appended a writer keeps in memory, to write again if the file is deleted
#: mid-run: about 8,000 window records, more than most runs write; beyond it, the oldest go.
KEEP_WRITTEN_BYTES = 8 << 20


class RecordWriter:
    """Appends records to a JSONL file: each call is one unbuffered write, so once it returns a
    kill (SIGKILL, the OOM killer, a crash) cannot lose it; it is in the kernel.

    Power loss is guarded by ``fsync``, which costs about a millisecond: it runs on a background
    thread at most every ``fsync_every_s`` seconds and at :meth:`close`, so a power cut loses at
    most the last few seconds of records (``fsync_every_s=None``: fsync every write, on the
    caller's thread).

    Each append starts on a fresh line (a line torn by an earlier kill or full disk stays a line of
    its own, which the reader skips). When the write fails (a full disk, a vanished mount), the
    file is cut back to where it was, the records are kept in memory and written with the next
    call that succeeds, a warning is given once, and :attr:`failed` holds the error: training
    goes on, nothing already written is lost. When the file or its folder is deleted or replaced
    mid-run, the next write makes them again and writes this writer's earlier records again (up to
    :data:`KEEP_WRITTEN_BYTES`, kept in memory), with a warning.

    Example::

        >>> import tempfile
        >>> from lightning_green.energy import make_meter
        >>> meter = make_meter("estimate")
        >>> meter.start()
        >>> record = WindowRecord.from_reading(meter.stop(), run_id="demo", stage="train", epoch=0, global_step=1)
        >>> writer = RecordWriter(f"{tempfile.mkdtemp()}/energy.jsonl")
        >>> writer.write(record)
        True
        >>> writer.close()
        >>> [w.run_id for w in read_windows(writer.path)]
        ['demo']
    """

    def __init__(self, path: str | os.PathLike[str], fsync_every_s: float | None = FSYNC_EVERY_S) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync_every_s = fsync_every_s
        self.pending: list[WindowRecord | LayerRecord] = []
        self.failed: OSError | None = None
        self._tail_checked = False
        self._synced_at = time.monotonic()
        self._dirty = False
        self._syncer: threading.Thread | None = None
        # What this writer appended, line by line (at most KEEP_WRITTEN_BYTES, oldest dropped first),
        # and the file it appended to: if that file is deleted or replaced mid-run, they are written again.
        self._written: deque[bytes] = deque()
        self._written_bytes = 0
        self._dropped = 0
        self._file: tuple[int, int] | None = None  # (st_dev, st_ino) after our last append
        self._end = 0  # the file's size after our last append: other writers only add to it
        self._warned_lost = False

    def write(self, record: WindowRecord | LayerRecord) -> bool:
        return self.write_many([record])

    def write_many(self, records: list[WindowRecord | LayerRecord]) -> bool:
        """Append ``records`` (and any kept from a failed write); ``False`` if they stay in memory."""
        todo = [*self.pending, *records]
        lost = self._lost()
        if not todo and not lost:
            return True
        lines = [(to_json(r) + "\n").encode("utf-8") for r in todo]
        data = b"".join(lines)
        restored: list[bytes] = []
        if lost:
            # The file we appended to was deleted or replaced (a clean-up script, an `rm -r` of the
            # folder mid-fit): what we wrote went with it, so it is written again, before the new lines.
            restored = self._missing()
            data = b"".join(restored) + data
            self._tail_checked = False
        inline_fsync = self.fsync_every_s is None
        try:
            fd = self._open()
            try:
                st = os.fstat(fd)
                size = st.st_size
                if not self._tail_checked and size > 0 and not _ends_with_newline(self.path):
                    data = b"\n" + data
                try:
                    _write_all(fd, data)
                    if inline_fsync:
                        os.fsync(fd)
                except OSError:
                    os.ftruncate(fd, size)  # no half-written line of ours stays behind
                    raise
                end = os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND: just past our lines
            finally:
                os.close(fd)
        except OSError as err:
            self.pending = todo
            self._tail_checked = False
            if self.failed is None:
                warnings.warn(
                    f"lightning-green: cannot write {self.path} ({err.strerror or err}); keeping "
                    f"{len(todo)} record(s) in memory and training on. They are written when the disk "
                    "accepts them; the run is marked incomplete.",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self.failed = err
            return False
        self.pending = []
        self._tail_checked = True
        self._file, self._end = (st.st_dev, st.st_ino), end
        if restored:
            self._warn_rewritten(len(restored))
        self._keep(lines)
        if not inline_fsync:
            self._dirty = True
            if time.monotonic() - self._synced_at >= self.fsync_every_s:  # type: ignore[operator]
                self._sync_in_background()
        return True

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        try:
            return os.open(self.path, flags, 0o644)
        except FileNotFoundError:
            # The folder itself was deleted mid-run: make it again, as the summary writer does,
            # rather than hold every later record in memory until the run ends.
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, flags, 0o644)

    def _lost(self) -> bool:
        """Whether the file this writer appended to is gone: deleted, replaced by another file, or
        cut shorter than our last append (other writers of a shared file only add to it)."""
        if self._file is None:
            return False
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        except OSError:
            return False  # the open that follows fails and says why
        return (st.st_dev, st.st_ino) != self._file or st.st_size < self._end

    def _missing(self) -> list[bytes]:
        """Our kept lines that the file at our path lacks (all of them when there is none): a file
        replaced by a copy of itself, or cut short, keeps the rest, which are not written twice."""
        try:
            present = {line.rstrip(b"\n") for line in self.path.read_bytes().splitlines()}
        except OSError:
            return list(self._written)
        return [line for line in self._written if line.rstrip(b"\n") not in present]

    def _keep(self, lines: list[bytes]) -> None:
        self._written.extend(lines)
        self._written_bytes += sum(map(len, lines))
        while self._written_bytes > KEEP_WRITTEN_BYTES and self._written:
            self._written_bytes -= len(self._written.popleft())
            self._dropped += 1

    def _warn_rewritten(self, count: int) -> None:
        if self._warned_lost:
            return
        self._warned_lost = True
        gone = (
            f"; the {self._dropped} oldest were beyond the {KEEP_WRITTEN_BYTES >> 20} MiB kept in memory and are lost"
            if self._dropped
            else ""
        )
        warnings.warn(
            f"lightning-green: {self.path} was deleted or replaced during the run; wrote this run's "
            f"{count} earlier record(s) to it again{gone}",
            RuntimeWarning,
            stacklevel=3,
        )

    def _sync_in_background(self) -> None:
        if self._syncer is not None and self._syncer.is_alive():
            return
        self._dirty, self._synced_at = False, time.monotonic()
        self._syncer = threading.Thread(target=self._fsync, name="lightning-green-fsync", daemon=True)
        self._syncer.start()

    def _fsync(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as err:  # surfaces as a warning; the data stays in the kernel's cache
            warnings.warn(
                f"lightning-green: fsync of {self.path} failed ({err})", RuntimeWarning, stacklevel=1
            )

    def close(self) -> None:
        """Write what is still held (records kept from a failed write, or all of them when the file
        vanished since the last write), then make every written record durable (waits for the
        background fsync)."""
        if self.pending or self._lost():
            self.write_many([])
        if self._syncer is not None:
            self._syncer.join()
            self._syncer = None
        if self._dirty and self.path.exists():
            self._dirty = False
            self._fsync()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """Where to write ``path``'s contents before renaming them onto it: a name unique per process and
    call, beside the folder rather than in it when the folder and its parent are on one mount.

    Folder synchronisers (Ray Tune copies a trial's folder to storage while the trial runs) list a
    folder and then copy each file; a temporary file that is renamed away in between fails their
    copy (and with it the trial). Outside the folder, they never see it.

    A rename cannot cross mounts (``EXDEV``), so when the folder is a mount point (a container's or
    a SLURM job's bind-mounted output folder, which can share the parent's ``st_dev``) the temporary
    file goes in the folder itself: a synchroniser may then see it, but the file is written.
    """
    path = Path(path)
    name = f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        folder = path.parent.resolve()
        outer = folder.parent
        if outer != folder and os.access(outer, os.W_OK) and not _is_mount_point(folder, outer):
            return outer / name
    except OSError:
        pass
    return path.with_name(name)


def _is_mount_point(folder: Path, outer: Path) -> bool:
    """Whether ``folder`` (resolved) is the root of a mount, so that ``outer``, its parent, is on
    another one. A bind mount of a folder of the same file system keeps its ``st_dev`` (and
    ``os.path.ismount`` says False), so Linux's mount table is read where there is one."""
    if folder.stat().st_dev != outer.stat().st_dev:
        return True
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            table = f.read()
    except OSError:
        return False  # not Linux: mounts of one device there are rare, and the rename's EXDEV is caught
    mounts = {_unescape_mount(line.split(" ")[4]) for line in table.splitlines() if line.count(" ") >= 4}
    return str(folder) in mounts


def _unescape_mount(field: str) -> str:
    """The kernel writes a space, tab, newline and backslash in a mount point as octal escapes."""
    for code in ("040", "011", "012", "134"):
        field = field.replace("\\" + code, chr(int(code, 8)))
    return field


def write_json_atomic(path: str | os.PathLike[str], data: dict[str, Any]) -> None:
    """Write JSON so that a reader sees the old file or the new one, never half of one.

    The temporary file (see :func:`temporary_path`) is unique per process and call, so concurrent
    writers never share it, and sits outside the folder where it can, so a folder synchroniser never
    copies it. If the rename still crosses a mount (``EXDEV``: a mount the check could not see), it
    is written again from inside the folder. On failure (a full disk) the temporary file is removed,
    the old file stays, and the error is raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False)
    tmp = temporary_path(path)
    try:
        _replace_with_text(tmp, path, text)
    except OSError as err:
        inside = path.with_name(tmp.name)
        if err.errno != errno.EXDEV or tmp == inside:
            raise
        _replace_with_text(inside, path, text)


def _replace_with_text(tmp: Path, path: Path, text: str) -> None:
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_run(directory: str | os.PathLike[str], record: RunRecord) -> Path:
    path = Path(directory) / RUN_FILE
    write_json_atomic(path, asdict(record))
    return path
