"""Follow a job's log file the way ``tail -f`` does, in lines a ``Log`` widget can show.

Reads only what was appended since the last call (a log of a day-long run is never read
whole: the first read starts ``initial_bytes`` from the end). A line still being written
(no newline yet) waits for its end. Progress bars that redraw with ``\\r`` become their last
state: Textual's ``Log`` would show every redraw as its own line. A file that shrank (rotated
or truncated) is read again from its start.
"""

from __future__ import annotations

from pathlib import Path


def wrap_line(line: str, width: int, indent: str = "    ") -> list[str]:
    """A log line as rows of at most ``width`` terminal cells, continuation rows indented, so a
    long line (a path, an error) is read whole instead of cut at the panel's edge. Measured in
    cells, not characters: a Japanese path is two cells a character (textwrap counted one, and
    the panel cut the rows' ends off)."""
    from rich.cells import cell_len, chop_cells

    if cell_len(line) <= width:
        return [line]
    width = max(width, 2)  # a wide character needs two cells
    if cell_len(indent) > width // 2:
        indent = ""
    rows: list[str] = []
    current = ""

    def room() -> int:
        return width - (cell_len(indent) if rows else 0)

    for word in line.split(" "):
        candidate = f"{current} {word}" if current else word
        if cell_len(candidate) <= room():
            current = candidate
            continue
        if cell_len(word) > width - cell_len(indent):
            # Wider than any row: it starts on this row, after what is there (as textwrap does).
            start = f"{current} " if current else ""
            pieces = chop_cells(word, room() - cell_len(start)) if room() > cell_len(start) else [""]
            if pieces[0]:
                current, word = start + pieces[0], word[len(pieces[0]):]
        if current.strip():
            rows.append(current.rstrip())
        current = ""
        while cell_len(word) > room():  # a word wider than a row: broken at a cell boundary
            piece = chop_cells(word, room())[0] or word[0]
            rows.append(piece)
            word = word[len(piece):]
        current = word
    if current.strip() or not rows:
        rows.append(current)
    return [rows[0], *(indent + row for row in rows[1:])]


def collapse_cr(line: str) -> str:
    """What a terminal would show for a line with carriage returns: the text after the last one."""
    line = line.rstrip("\r")
    return line.rsplit("\r", 1)[-1]


class LogFollower:
    def __init__(self, path: Path, initial_bytes: int = 64 * 1024) -> None:
        self.path = Path(path)
        self.initial_bytes = initial_bytes
        self.offset: int | None = None  # None: not opened yet
        self.partial = b""

    def read_new(self) -> list[str]:
        try:
            size = self.path.stat().st_size
        except OSError:
            return []  # not created yet (the job has not started): try again later
        skipped_head = False
        if self.offset is None:
            self.offset = max(0, size - self.initial_bytes)
            skipped_head = self.offset > 0
        elif size < self.offset:
            self.offset, self.partial = 0, b""
        if size == self.offset:
            return []
        with open(self.path, "rb") as handle:
            handle.seek(self.offset)
            data = handle.read(size - self.offset)
        self.offset += len(data)
        data = self.partial + data
        *lines, self.partial = data.split(b"\n")
        if skipped_head and lines:
            lines = lines[1:]  # the first piece is the tail of a line cut by the seek
        return [collapse_cr(line.decode("utf-8", errors="replace")) for line in lines]
