"""File-system checks and creation with the user's permissions.

* :func:`check_writable_dir`: a destination folder (``--output-dir``, ``clipeval export -o``'s
  parent, the caption and text-eval output folders) made and probed **before** any model work,
  so a bad destination ends in one :class:`~clipeval.engine.errors.ConfigError` instead of a
  traceback after all the embedding was done.
* :func:`current_umask`, :func:`make_temp_dir`, :func:`apply_umask`: files and folders made
  through :mod:`tempfile` get ``0600`` / ``0700``; what clipeval publishes (result files, bundles)
  gets the mode a plain ``open`` / ``mkdir`` would give (``0666`` / ``0777`` less the umask).
* :func:`write_atomic`: the one way a file is published (a temporary file beside it, then a
  rename), and :func:`staging_dir` + :func:`publish_dir`: the one way a folder is (built beside
  its place, then swapped in by renames, the old one put back if the swap fails). A reader never
  sees a half-written file or folder.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
import threading
import uuid
from pathlib import Path

from .errors import ConfigError
from .textio import kind_of

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where Linux says it (``/proc/self/status``);
    elsewhere through ``os.umask`` under a lock (which sets it back at once)."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` gives a new file: ``0o666`` less the umask."""
    return 0o666 & ~current_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` gives a new folder: ``0o777`` less the umask."""
    return 0o777 & ~current_umask()


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file or folder made by :mod:`tempfile`) the mode a plain ``open`` or
    ``mkdir`` would have given it."""
    os.chmod(path, dir_mode() if os.path.isdir(path) else file_mode())


def refuse_non_regular(path: str | os.PathLike, what: str = "") -> None:
    """Raise :class:`ConfigError` when ``path`` exists (links followed) and is not a regular file:
    a folder, a FIFO, a character or block device (``/dev/null``), a socket. A file written to
    ``path`` by rename would replace it. ``what`` names the setting in the message (``-o``)."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):  # missing (or a broken link: replacing the link is fine)
        return
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what + ' ' if what else ''}{os.fspath(path)} is {kind_of(mode)}, not a regular file: "
                          "clipeval writes a new file in its place, which would replace it",
                          "name a regular file (or a new one) to write")


def make_temp_dir(prefix: str, dir: str | os.PathLike, suffix: str = "") -> Path:
    """:func:`tempfile.mkdtemp` in ``dir``, with the mode of a plain ``mkdir`` (not ``0700``):
    for folders that are renamed into place and published (bundles, caches)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=dir))
    os.chmod(path, dir_mode())
    return path


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    The folder is created when missing. The file gets the mode a plain ``open`` would give it
    (``0o666`` less the umask), not the ``0o600`` of :func:`tempfile.mkstemp`. On any error the
    temporary file is removed and ``path`` is as it was. Raises ``OSError`` from the system, and
    :class:`ConfigError` when ``path`` (a link followed) is something a file must not replace: a
    folder, a FIFO, a device such as ``/dev/null`` (the rename would put a regular file in its
    place), or a socket.
    """
    path = Path(path)
    refuse_non_regular(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


STAGE_MARK = ".partial-"  # hidden folders being built: ``.{name}.partial-XXXX`` beside their place
OLD_MARK = ".old-"  # a replaced folder on its way out: ``.{name}.old-XXXX``


def staging_dir(target: str | os.PathLike) -> Path:
    """A new, empty, hidden folder beside ``target`` (``.{name}.partial-XXXX``, the mode of a
    plain ``mkdir``) to build its content in before :func:`publish_dir`. Creates the parent."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return make_temp_dir(prefix=f".{target.name}{STAGE_MARK}", dir=target.parent)


def publish_dir(stage: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make the folder ``stage`` appear at ``target`` by renames only.

    A folder already at ``target`` is renamed aside first and removed once the new one is in
    place; if putting the new one in place fails, the old one is renamed back before the error
    is raised, so ``target`` always holds one whole folder (the old or the new). ``stage`` must
    be on the same file system (:func:`staging_dir` makes it so).
    """
    stage, target = Path(stage), Path(target)
    if not os.path.lexists(target):
        os.replace(stage, target)
        return
    old = target.parent / f".{target.name}{OLD_MARK}{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(stage, target)
    except BaseException:
        os.replace(old, target)
        raise
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old, ignore_errors=True)
    else:  # a file or a link was at target: removed too, not left behind as a hidden .old- entry
        with contextlib.suppress(OSError):
            old.unlink()


def remove_stale_stages(target: str | os.PathLike) -> None:
    """Remove the staging and replaced folders of ``target`` a killed run left behind. Only for
    a caller that holds ``target`` exclusively (another run may be building one right now)."""
    target = Path(target)
    for mark in (STAGE_MARK, OLD_MARK):
        for stale in target.parent.glob(f".{target.name}{mark}*"):
            shutil.rmtree(stale, ignore_errors=True)


def _reason(exc: OSError) -> str:
    known = {
        errno.ENAMETOOLONG: "the path or one of its names is longer than the file system allows",
        errno.EROFS: "the file system is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOSPC: "no space left on the device",
        errno.EDQUOT: "the disk quota is exceeded",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EEXIST: "a file of that name exists",
        errno.ELOOP: "the path has a symbolic-link loop",
    }
    return known.get(exc.errno, exc.strerror or str(exc))


NAME_MAX = 255  # bytes per path component (ext4, xfs, btrfs, tmpfs)
PATH_MAX = 4096  # bytes per path (Linux)


def check_path_text(value: str) -> str | None:
    """Why ``value`` cannot name a file on this system (``None`` when it can): a NUL character, a
    lone surrogate, a name over ``NAME_MAX`` bytes or a path over ``PATH_MAX`` bytes."""
    if "\0" in value:
        return "holds a NUL character"
    try:
        raw = os.fsencode(value)
    except UnicodeError:
        return "holds characters no file name can hold (a lone UTF-16 surrogate)"
    if len(raw) > PATH_MAX:
        return f"is {len(raw)} bytes long; paths are limited to {PATH_MAX}"
    longest = max((len(part) for part in raw.split(b"/")), default=0)
    if longest > NAME_MAX:
        return f"holds a name of {longest} bytes; file names are limited to {NAME_MAX}"
    return None


def not_a_file(path: str | os.PathLike) -> str:
    """Why ``path``, which is not a regular file, cannot be read as one, without opening it (a
    FIFO would block): ``does not exist``, ``is a folder``, ``is a FIFO, not a regular file``,
    ``is a character device, ...``, ``is a broken symbolic link``..."""

    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "is a broken symbolic link" if path.is_symlink() else "does not exist"
    except OSError as exc:
        return f"cannot be read ({_reason(exc)})"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    for test, what in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return f"is {what}, not a regular file"
    return "is not a regular file"


def _nearest_existing(path: Path) -> tuple[Path | None, Path | None]:
    """``(nearest existing folder on the way to path, first existing component that is not a
    folder)``; the second is ``None`` when every existing component is a folder."""
    for part in (path, *path.parents):
        try:
            if part.is_dir():
                return part, None
            if os.path.lexists(part):
                return None, part
        except (OSError, ValueError):
            return None, None
    return None, None


def _kind_of_entry(path: Path) -> str:
    """``a file``, ``a FIFO (named pipe)``, ``a character device``..., ``a broken symbolic link``:
    what stands where a folder should be (links followed)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "a broken symbolic link" if os.path.islink(path) else "a file"
    return "a file" if stat.S_ISREG(mode) else kind_of(mode)


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Make sure clipeval can create files in the folder ``path`` (creating it and its parents
    where missing) and return it (``~`` expanded). Nothing is left behind: the check makes and
    removes a probe in the folder, or in its nearest existing parent, so read-only mounts,
    permissions, quotas, a file where a folder should be and names that are too long are all
    found before any work starts.

    ``what`` names the setting in messages (e.g. ``"output folder (--output-dir / output_dir)"``).
    Raises :class:`ConfigError` naming ``what``, the path and the reason, with a remedy.
    """
    text = os.fsdecode(os.fspath(path))
    remedy = f"pass another {what}, or make that place a folder you can write to"
    problem = check_path_text(text) if text else "is empty"
    if problem:
        raise ConfigError(f"the {what} {text!r} is not a usable path: it {problem}", remedy)
    folder = Path(os.path.expanduser(text))
    existing, blocker = _nearest_existing(folder.absolute())
    if blocker is not None:
        kind = _kind_of_entry(blocker)
        where = f"is {kind}" if blocker == folder.absolute() else f"lies under {blocker}, which is {kind}, not a folder"
        raise ConfigError(f"cannot write to the {what} {folder}: it {where}", remedy)
    if existing is None:
        raise ConfigError(f"cannot write to the {what} {folder}: no part of the path can be looked at", remedy)
    try:
        if existing == folder.absolute():
            fd, probe = tempfile.mkstemp(prefix=".clipeval-write-test-", dir=existing)
            os.close(fd)
            os.unlink(probe)
        else:
            os.rmdir(tempfile.mkdtemp(prefix=".clipeval-write-test-", dir=existing))
    except OSError as exc:
        raise ConfigError(f"cannot write to the {what} {folder}: {_reason(exc)} (in {existing})", remedy) from None
    return folder
