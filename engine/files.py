"""File-system checks shared by validation and the job runners.

An output folder that cannot be written used to be found out at the end of a training, when
the LoRA was saved: the work was lost. It is checked when a project is loaded (``check``, the
app's form, ``run``) and again when a job starts, without creating anything.
"""

from __future__ import annotations

import os
from pathlib import Path

# Kernel pseudo-filesystems: a path there "exists" but nothing can be kept in it.
PSEUDO_ROOTS = (Path("/proc"), Path("/sys"), Path("/dev"))


def writable_folder_problem(folder: Path | str) -> str | None:
    """Why files could not be written into ``folder`` (created if missing), or None.

    Looks at the folder, or at its nearest existing parent when it does not exist yet (that is
    where it would be created): that must be a folder, writable, on a writable filesystem,
    and not a kernel pseudo-filesystem. Nothing is created."""
    folder = Path(folder).expanduser()
    resolved = Path(os.path.abspath(folder))
    for root in PSEUDO_ROOTS:
        if resolved == root or root in resolved.parents:
            return f"{folder} is on the kernel's {root} filesystem: outputs cannot be kept there"
    existing = resolved
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing.is_symlink() and not existing.exists():
        return f"{existing} is a broken symlink"
    if not existing.is_dir():
        what = "is a file" if existing == resolved else f"lies under the file {existing}"
        return f"{folder} {what}, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{folder}: {existing} is not writable by this user"
    try:
        if os.statvfs(existing).f_flag & os.ST_RDONLY:
            return f"{folder}: {existing} is on a read-only filesystem"
    except (OSError, AttributeError):  # no statvfs (Windows): the access check above stands
        pass
    return None
