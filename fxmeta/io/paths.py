"""Output paths: one check for every file and folder fxmeta writes, and cleanup of only its own files.

``check_output`` is called for every output (``--out``, ``--export``, ``--log``, checkpoint
folders, dumps, zoo and metanetwork folders) before any long work starts. It refuses

- a path that is one of the inputs (even with ``force``),
- an existing file without ``force``,
- a directory where a file is wanted, a file where a directory is wanted,
- a place that cannot be written (missing or read-only folder).

``check_outputs`` also refuses two outputs that are the same path. ``Created`` records
the files and folders a run creates so that cleanup removes exactly those: never a file
or folder that was there before.
"""
from __future__ import annotations

import contextlib
import os
import secrets
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from ..errors import FxmetaError, OutputExistsError


def check_output(path: str | os.PathLike, *, inputs: Sequence[str] = (), force: bool = False, kind: str = "file",
                 what: str = "output", existing_ok: bool = False) -> str:
    """Refuse an output path before any work is done; returns the path as a string.

    ``kind`` is ``"file"`` or ``"dir"``. ``existing_ok`` accepts an existing file without
    ``force`` (a log appended to on resume); a directory may always exist, its files are
    checked by whoever writes them.
    """
    path = os.fspath(path)
    if not path:
        raise FxmetaError(f"empty {what} path")
    if kind == "file" and path.endswith((os.sep, os.altsep or os.sep)):
        raise OutputExistsError(f"{what} {path} ends with a path separator: give a file path")
    for spec in inputs:
        for candidate in spec_paths(os.fspath(spec)):
            if same_file(path, candidate):
                raise OutputExistsError(f"{what} {path} is also an input ({spec}); write it to another path")
    if kind == "file":
        if os.path.isdir(path):
            raise OutputExistsError(f"{what} {path} is a directory; give a file path")
        if os.path.lexists(path) and not (force or existing_ok):
            raise OutputExistsError(f"{what} {path} exists; pass --force to overwrite it, or choose another path")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise FxmetaError(f"the folder of {what} {path} ({folder}) does not exist; create it first")
        _check_writable(folder, what, path)
        _check_name_length(folder, what, path)
    elif kind == "dir":
        if os.path.exists(path) and not os.path.isdir(path):
            raise OutputExistsError(f"{what} {path} is a file; give a folder path")
        existing = os.path.abspath(path)
        while not os.path.isdir(existing):
            parent = os.path.dirname(existing)
            if parent == existing:
                break
            if os.path.exists(parent) and not os.path.isdir(parent):
                raise OutputExistsError(f"{what} {path}: {parent} is a file, not a folder")
            existing = parent
        _check_writable(existing, what, path)
    else:  # pragma: no cover - programming error
        raise ValueError(f"kind={kind!r}")
    return path


def check_outputs(outputs: Iterable[tuple[str, str | None]], *, inputs: Sequence[str] = (), force: bool = False,
                  dirs: Iterable[tuple[str, str | None]] = (), existing_ok: Sequence[str] = ()) -> None:
    """``check_output`` for named files and folders (``(what, path)``, None skipped), all distinct."""
    seen: list[tuple[str, str]] = []
    for kind, items in (("file", outputs), ("dir", dirs)):
        for what, path in items:
            if not path:
                continue
            for other_what, other in seen:
                if same_file(path, other) or os.path.abspath(path) == os.path.abspath(other):
                    raise OutputExistsError(f"{other_what} and {what} are both {path}; give them different paths")
            check_output(path, inputs=inputs, force=force, kind=kind, what=what,
                         existing_ok=what in existing_ok)
            seen.append((what, path))


def temp_path(path: str) -> str:
    """Where an atomic write of ``path`` writes first: a hidden name beside it that carries the writing
    process's id, so that a later run can tell a dead run's leftover from a live run's file."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")


TEMP_EXTRA = len(".") + len(".") + 7 + len(".") + 12 + len(".tmp")  # what a temp name adds (pids have <= 7 digits)


def remove_stale_temps(path: str) -> list[str]:
    """Remove the temp files of ``path`` left by writing processes that no longer run (a SIGKILL during
    a save); a live process's temp file is kept. Returns what was removed."""
    folder, name = os.path.split(os.path.abspath(path))
    removed = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return removed
    prefix = f".{name}."
    for entry in entries:
        if not (entry.startswith(prefix) and entry.endswith(".tmp")):
            continue
        pid_text = entry[len(prefix):-len(".tmp")].split(".")[0]
        if not pid_text.isdigit() or _alive(int(pid_text)):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, entry))
            removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def _check_name_length(folder: str, what: str, path: str) -> None:
    """The temp file an atomic write makes must fit where the final name fits: refuse the name now."""
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        limit = 255
    name = os.path.basename(path)
    if len(os.fsencode(name)) + TEMP_EXTRA > limit:
        raise FxmetaError(f"{what} {path}: the file name is too long ({len(os.fsencode(name))} bytes; at most "
                          f"{limit - TEMP_EXTRA} here, as writes go through a temporary file beside it)")


def _check_writable(folder: str, what: str, path: str) -> None:
    """Create and remove a probe file: the only test that also holds for ACLs and read-only mounts."""
    probe = os.path.join(folder, f".fxmeta-write-test.{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise FxmetaError(f"cannot write {what} {path}: {folder} is not writable ({exc.strerror})") from None


def spec_paths(spec: str) -> list[str]:
    """The file paths a spec may name: itself, SPEC@FILE's parts, FILE.py:factory's file."""
    paths = [spec]
    if "@" in spec:
        arch, weights = spec.rsplit("@", 1)
        paths += [weights, *spec_paths(arch)]
    target, sep, _ = spec.rpartition(":")
    if sep and target.endswith(".py"):
        paths.append(target)
    return [p for p in paths if p]


def same_file(a: str, b: str) -> bool:
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)  # hard links
    except OSError:
        return False


@dataclass
class Created:
    """The folders a run is about to create and the files it writes in them, for cleanup.

    ``folder(path)`` notes whether ``path`` (and which of its parents) exist now; ``file``
    registers a file fxmeta writes. ``remove()`` deletes the registered files and then the
    folders that did not exist before and are empty: a user's files are never touched.
    """

    files: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)

    def folder(self, path: str | os.PathLike, ours: bool = False) -> str:
        """``ours``: the folder is fxmeta's own from an earlier run of the same job (a resumed run's
        default checkpoint folder): removed when empty even though it exists now."""
        path = os.path.abspath(os.fspath(path))
        if ours and os.path.isdir(path) and path not in self.folders:
            self.folders.append(path)
        missing = []
        probe = path
        while not os.path.exists(probe):
            missing.append(probe)
            parent = os.path.dirname(probe)
            if parent == probe:
                break
            probe = parent
        for p in missing:
            if p not in self.folders:
                self.folders.append(p)
        return path

    def file(self, path: str | os.PathLike) -> str:
        path = os.path.abspath(os.fspath(path))
        if path not in self.files:
            self.files.append(path)
        return path

    def remove(self) -> None:
        for path in self.files:
            with contextlib.suppress(FileNotFoundError, IsADirectoryError, NotADirectoryError):
                os.unlink(path)
        for path in sorted(self.folders, key=len, reverse=True):  # deepest first
            with contextlib.suppress(OSError):
                os.rmdir(path)  # only when empty
