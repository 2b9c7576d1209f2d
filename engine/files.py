"""Writing files so that they survive, and checking that they can be written.

Every file copylora writes (LoRAs, checkpoints, statistics, project files, previews, class
images) goes through :func:`atomic_write`: a temporary file beside the target, written, flushed
and fsynced, renamed over the target, and the folder fsynced, so a crash or a power cut leaves
the old file or the new one, never half of one. The file gets the mode any other tool would
give it (0666 minus the umask): an A1111/ComfyUI server running as another user can read the
LoRA (``mkstemp`` alone makes it 0600).

An output folder that cannot be written used to be found out at the end of a training, when
the LoRA was saved: the work was lost. It is checked when a project is loaded (``check``, the
app's form, ``run``) and again when a job starts, without creating anything.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path
from typing import Callable

# Kernel pseudo-filesystems: a path there "exists" but nothing can be kept in it.
PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def input_file_problem(path: Path | str) -> str | None:
    """Why ``path`` cannot be read as an input file, in a user's words, or None: missing, a link
    to nothing or to itself, a folder, a pipe or a device (a read of a FIFO blocks for good), or
    what the OS says (a name too long, a folder this user cannot enter)."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # the OS says "Too many levels of symbolic links"
            return f"{path} is a link that leads back to itself (a loop of links)"
        if exc.errno != errno.ENOENT:
            return f"{path}: {exc.strerror or exc}"
        if path.is_symlink():
            return f"{path} is a link to {os.readlink(path)}, which does not exist"
        return f"no such file: {path}"
    if stat.S_ISDIR(mode):
        return f"{path} is a folder, not a file"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file (a pipe or a device?)"
    return None


# atomic_write's temporary file beside its target is ".<name>.<8 random characters>.tmp".
TEMP_NAME_EXTRA = 14


def _name_max(absolute: str) -> int:
    """The longest name, in bytes, on the filesystem where ``absolute`` is or would be made: asked
    of its nearest existing folder (255 on ext4, xfs, btrfs and NFS; 143 on eCryptfs; FUSE and
    network filesystems vary), else 255."""
    here = absolute
    while True:
        try:
            return os.pathconf(here, "PC_NAME_MAX")
        except (OSError, ValueError, AttributeError):  # not there yet, a name too long on the way, no pathconf
            parent = os.path.dirname(here)
            if parent == here:
                return 255
            here = parent


def long_name_problem(path: Path | str, extra: int = 0) -> str | None:
    """A name in ``path`` longer than the filesystem allows (the last one with ``extra`` bytes
    to spare, for the temporary file written beside it), or None. Said before any work: the
    OS's "File name too long" came when the result was written, after the work (or, from a
    ``stat`` on the way, as an internal error)."""
    absolute = os.path.abspath(Path(path).expanduser())
    parts = Path(absolute).parts[1:]
    limit = _name_max(absolute)
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        room = limit - (extra if last else 0)
        size = len(os.fsencode(part))
        if size > room:
            what = "its name" if last else "a folder name in it"
            why = f"names of {limit}, less {extra} for the temporary name written beside it" if last and extra else f"names of {limit}"
            return f"{path}: {what} is too long: {size} bytes; at most {room} fit (the filesystem allows {why})"
    return None


def writable_folder_problem(folder: Path | str) -> str | None:
    """Why files could not be written into ``folder`` (created if missing), or None.

    Looks at the folder, or at its nearest existing parent when it does not exist yet (that is
    where it would be created): that must be a folder, writable, on a writable filesystem,
    and not a kernel pseudo-filesystem. Nothing is created."""
    if "\0" in str(folder):  # pathlib's exists() says False for it, and the folder check passed on the parent
        return f"{str(folder)!r} holds a NUL character (\\0), which no file name can"
    folder = Path(folder).expanduser()
    if problem := long_name_problem(folder):
        return problem
    resolved = Path(os.path.abspath(folder))
    for root in PSEUDO_ROOTS:
        if resolved == root or root in resolved.parents:
            return f"{folder} is on the kernel's {root} filesystem: outputs cannot be kept there"
    existing = resolved  # absolute, not resolved: a link on the way is what to look at
    while not existing.exists():
        if existing.is_symlink():  # dangling, or a loop: exists() is False and mkdir would fail there
            return f"{existing} is a broken symlink (it points to {os.readlink(existing)})"
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        what = "is a file" if existing == resolved else f"lies under the file {existing}"
        return f"{folder} {what}, not a folder"
    # The filesystem first: on a read-only mount os.access fails too, and "read-only filesystem"
    # is the cause the user can act on ("not writable by this user" sends them to chmod).
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"{folder}: {existing} is on a read-only filesystem"
    except (OSError, AttributeError):  # no statvfs (Windows): the access check below stands
        pass
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{folder}: {existing} is not writable by this user"
    return None


def unwritable_folder(folder: Path | str) -> bool:
    """Whether ``folder`` (or, not made yet, its nearest existing parent) is a folder that only
    cannot be written: a read-only mount, another user's. A project there can be looked at
    (its plan, outputs, grid), not trained (engine.project.folder.load_project's ``writing``)."""
    existing = nearest_folder(Path(folder))
    if not existing.is_dir():
        return False
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return True
    except (OSError, AttributeError):
        pass
    return not os.access(existing, os.W_OK | os.X_OK)


def current_umask() -> int:
    """The process's umask (read from /proc where it can be, so nothing is changed)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting, put back at once
    os.umask(mask)
    return mask


def staging_folder(final: Path, suffix: str = "") -> Path:
    """A new hidden folder beside ``final`` to build it in and rename into place (same
    filesystem, so the rename is atomic), with the permissions ``mkdir`` would give ``final``:
    mkdtemp makes it 0700, which the rename would keep (a project or baked model nobody
    else on the box could read). A setgid parent's bit is kept, as mkdir keeps it: a chmod
    without it took it off, and a project made in a group's shared folder (drwxrwsr-x) got its
    maker's group, not writable by the rest of the group."""
    import stat
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=suffix, dir=final.parent))
    folder.chmod((0o777 & ~current_umask()) | (final.parent.stat().st_mode & stat.S_ISGID))
    return folder


def give_umask_modes(folder: Path) -> None:
    """Files below ``folder`` with the mode the umask gives a new file (0644, or 0664 under a
    group's umask 002): some writers make theirs 0600 (a library's temporary-then-rename), and a
    shared cache of them was unreadable to everyone else."""
    mode = 0o666 & ~current_umask()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            path.chmod(mode)


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform lets a folder be fsynced)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _disk_full(folder: Path) -> bool:
    """Whether the disk under ``folder`` has (next to) no room left: a writer's failure is then
    the full disk, whatever words it used."""
    try:
        return shutil.disk_usage(folder).free < 16 << 20
    except OSError:
        return False


FULL_DISK_WORDS = ("No space left on device", "os error 28", "Disk quota exceeded", "no space left on its disk")


def disk_full_error(exc: BaseException) -> bool:
    """Whether ``exc`` (or what it was raised from) is a full disk or an exhausted quota: its
    errno, or the words writers that wrap it use (safetensors' "os error 28", our own)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if getattr(seen, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or any(w in str(seen) for w in FULL_DISK_WORDS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def free_text(folder: Path | str) -> str:
    """The room left under ``folder`` as a user reads it ("12.5 MB free"), or "" unknown."""
    try:
        free = shutil.disk_usage(nearest_folder(Path(folder))).free
    except OSError:
        return ""
    return f"{free / 1e9:.1f} GB free" if free >= 1e9 else f"{free / 1e6:.1f} MB free"


def nearest_folder(path: Path) -> Path:
    """``path`` or the nearest of its parents that exists."""
    path = Path(path).absolute()
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def full_disk_text(path: Path | str) -> str:
    """"cannot write PATH: no space left on its disk (12.0 MB free; df -h FOLDER)"."""
    folder = nearest_folder(Path(path).parent)
    return f"cannot write {path}: no space left on its disk ({free_text(folder) or 'full'}; df -h {folder})"


def write_failure(path: Path | str, exc: BaseException) -> OSError:
    """A writer's failure as the OSError callers handle as "could not write": one naming the
    file (a full disk said "[Errno 28] No space left on device" and nothing else, safetensors
    "Error while serializing: I/O error: …") and, for a full disk, the room left and what to run.
    An OSError that already names its file is kept as it is."""
    from engine.errors import first_line

    if isinstance(exc, OSError) and (exc.filename is not None or str(path) in str(exc)):
        return exc
    if disk_full_error(exc):
        error = OSError(full_disk_text(path))
        error.errno = errno.ENOSPC
        return error
    if isinstance(exc, OSError):
        error = type(exc)(f"cannot write {path}: {exc.strerror or exc}")  # the same kind (PermissionError stays one), saying more
        error.errno = exc.errno
        return error
    return OSError(f"cannot write {path}: {first_line(exc)}")


def atomic_write(path: Path | str, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)``, fsync the result, give it the umask's mode (or the mode of the
    file it replaces, which must not be read-only), rename it onto ``path`` and fsync the folder. On any failure the temporary file is removed and the old
    ``path`` (if any) is untouched. Writers that report I/O failures as RuntimeError (torch)
    are turned into OSError, which callers handle as "could not write"."""
    path = Path(path)
    try:
        mode = stat.S_IMODE(path.stat().st_mode) if path.is_file() else 0o666 & ~current_umask()
    except OSError:
        mode = 0o666 & ~current_umask()
    if path.is_file() and not mode & 0o222:
        # The rename would replace it all the same (the folder is writable, and root ignores
        # modes): a file made read-only is one its owner wants left alone.
        raise PermissionError(f"{path} is read-only (mode {mode:04o}); make it writable to change it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # its length: TEMP_NAME_EXTRA
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            write(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)  # a new file: the umask's mode; a rewritten one keeps its own
            os.replace(tmp, path)
        except OSError as exc:
            raise write_failure(path, exc) from exc
        except RuntimeError as exc:
            if _disk_full(path.parent):  # torch says a full disk as "[enforce fail at inline_container.cc:672] . unexpected pos …"
                error = OSError(full_disk_text(path))
                error.errno = errno.ENOSPC
                raise error from exc
            raise write_failure(path, exc) from exc
        fsync_folder(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def stale_temps(folder: Path, target: str | None = None, older_than_s: float = 0.0) -> list[Path]:
    """atomic_write's temporary files in ``folder`` (of ``target``'s name alone, if given) that a
    process killed mid-write left behind (a checkpoint-sized one each time, on SDXL), at least
    ``older_than_s`` old. Only the caller knows no live writer is making them: it holds the
    lock of what is written there, or they are older than any write takes."""
    import re

    name = re.escape(target) if target is not None else r".+"
    pattern = re.compile(rf"^\.{name}\.[A-Za-z0-9_]{{8}}\.tmp$")
    found = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return []
    for entry in entries:
        try:
            if pattern.match(entry.name) and entry.is_file(follow_symlinks=False) and now - entry.stat().st_mtime >= older_than_s:
                found.append(Path(entry.path))
        except OSError:
            continue
    return found


def remove_stale_temps(folder: Path, target: str | None = None, older_than_s: float = 0.0) -> int:
    """Remove :func:`stale_temps`; how many went (one that cannot be removed is left)."""
    removed = 0
    for path in stale_temps(folder, target, older_than_s):
        try:
            path.unlink()
            removed += 1
        except OSError:
            continue
    return removed


def write_text_atomic(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def file_version(path: Path | str) -> tuple[int, int, int] | None:
    """What tells one version of a file from the next (its inode, modification time in ns and
    size; an atomic write makes a new inode), or None when it cannot be read. A form that saves
    a file compares it with what it read, so it does not overwrite another program's edit."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def take_lock(path: Path | str, holder: str):
    """An exclusive flock on ``path`` (made if missing), not waited for: (the open file, which
    holds the lock until it is closed or its process ends however it ends, None), with
    ``holder`` written in it for the next one to read; or (None, what the holder wrote) when
    another holds it."""
    import fcntl

    try:
        handle = open(path, "a+", encoding="utf-8")
    except PermissionError:
        # Another user's lock file in a folder we may write (a group's shared project): flock
        # needs no write access, so the lock still holds; only the holder cannot be written.
        # (Skipping it let two users' workers train one side at once, over each other's files.)
        handle = open(path, encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        held_by = handle.read().strip()
        handle.close()
        return None, held_by
    if handle.writable():
        handle.seek(0)
        handle.truncate()
        handle.write(holder)
        handle.flush()
    return handle, None
