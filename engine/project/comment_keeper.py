"""A user's own comments in ``copylora.toml``, kept where they were when copylora saves it.

copylora writes the file in its canonical layout (engine.project.toml_writer: each key under
its documentation). The comments a user wrote by hand ("lr 1e-4 worked better on this pair")
went at the first save from the app or `import-kohya --into`, without a word. Here each one
is put back: a comment above a key goes above that key again (under copylora's own comment),
a comment at the end of a key's line goes on a line of its own above it (the value is
copylora's to write), one at the end of a table goes at the end of that table, and one whose
key or table is no more goes at the end of the file, saying where it was.

The file is read line by line with the tables and keys as TOML has them; a value spread over
several lines (an array, a multi-line string) is read until it parses, so a ``#`` inside it is
never taken for a comment. Only what is a comment is moved: the saved text still parses to
the values given (``save_project`` checks it before writing).
"""

from __future__ import annotations

import re

import tomllib

_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*([A-Za-z0-9_-]+|"[^"]*"|'[^']*')\s*=""")

# Where a comment belongs: ("top",), ("table", TABLE), ("key", TABLE, KEY); TABLE is the
# header's name with the occurrence of an array of tables: "concept#2".
Place = tuple[str, ...]


def _parses(text: str) -> bool:
    try:
        tomllib.loads(text)
        return True
    except tomllib.TOMLDecodeError:
        return False


def _inline_comment(line: str) -> str | None:
    """The ``# …`` at the end of a key's line, or None: the first ``#`` after which the line's
    start still parses on its own (a ``#`` in a string does not end a value that parses)."""
    for at in (m.start() for m in re.finditer("#", line)):
        if line[:at].strip() and _parses(line[:at]):
            return line[at:].strip()
    return None


def _read(text: str) -> list[tuple[str, Place, int]]:
    """Each line's kind ("comment", "key", "table", "blank", "more": a value's next lines) and
    place, with the line's index."""
    out: list[tuple[str, Place, int]] = []
    table, counts = "", dict[str, int]()  # the current table, and how many times each [[array]] was opened
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            out.append(("blank", ("table", table) if table else ("top",), i))
        elif stripped.startswith("#"):
            out.append(("comment", ("table", table) if table else ("top",), i))
        elif (header := _TABLE.match(line)) and not _KEY.match(line):
            name = header.group(2)
            if header.group(1) == "[[":
                counts[name] = counts.get(name, 0) + 1
                name = f"{name}#{counts[name]}"
            table = name
            out.append(("table", ("table", table), i))
        elif key := _KEY.match(line):
            place: Place = ("key", table, key.group(1).strip("\"'"))
            out.append(("key", place, i))
            end = i  # a value over several lines: read on until it parses
            while end + 1 < len(lines) and not _parses("\n".join(lines[i:end + 1])):
                end += 1
            value = "\n".join(lines[i:end + 1])
            for j in range(i + 1, end + 1):  # a comment line among an array's lines (not a string's: that changes the value)
                without = "\n".join(lines[k] for k in range(i, end + 1) if k != j)
                inside = lines[j].strip().startswith("#") and _parses(value) and _parses(without) and tomllib.loads(without) == tomllib.loads(value)
                out.append(("inside" if inside else "more", place, j))
            i = end
        else:
            out.append(("more", ("table", table) if table else ("top",), i))
        i += 1
    return out


def keep_comments(old: str, new: str) -> str:
    """``new`` (copylora's rendering) with the comments of ``old`` that ``new`` does not have
    put back at their places (see the module's doc). ``new`` as it is when there are none, or
    where the result would not read as ``new`` does (never expected: a comment is only moved)."""
    try:
        kept = _kept(old, new)
        return kept if kept == new or tomllib.loads(kept) == tomllib.loads(new) else new
    except (tomllib.TOMLDecodeError, ValueError):
        return new


def _docs(new: str) -> dict[Place, list[str]]:
    """copylora's own comments of ``new`` by what they sit right above: a key, a table's header,
    or the first table (the file's header)."""
    lines = new.splitlines()
    docs: dict[Place, list[str]] = {}
    block: list[str] = []
    first = True
    for kind, place, i in _read(new):
        if kind == "comment":
            block.append(lines[i].strip())
            continue
        if kind == "key":
            docs[place] = block
        elif kind == "table":
            docs[("header", place[1])] = block + (docs.pop(("top",), []) if first else [])
            first = False
        elif kind == "blank" and first:
            docs.setdefault(("top",), []).extend(block)
        block = []
    return docs


def _earlier_docs(block: list[str], doc: list[str]) -> set[int]:
    """Which lines of ``block`` (the comments right above a key or header) are copylora's own
    documentation as an earlier version wrote it: for each line of ``doc`` (what this version
    writes there), the block's line most like it, if it is like it at all. Kept as the user's,
    every doc line ever reworded would pile up above its key; a line of the user's between the
    doc and the key stays the user's."""
    from difflib import SequenceMatcher

    taken: set[int] = set()
    for mine in doc:
        scores = [(SequenceMatcher(None, line, mine).ratio(), n) for n, line in enumerate(block) if n not in taken]
        best = max(scores, default=(0.0, -1))
        if best[0] >= 0.4:
            taken.add(best[1])
    return taken


_UNSET_KEY = re.compile(r"#\s*[A-Za-z0-9_-]+\s*=")  # how copylora writes an optional key left unset ("# unet_lr =")


def _kept(old: str, new: str) -> str:
    own = {line.strip() for line in new.splitlines() if line.strip().startswith("#")}
    docs = _docs(new)
    old_lines = old.splitlines()
    wanted: dict[Place, list[str]] = {}
    pending: list[str] = []  # comments not yet placed, above the line being read
    block: list[str] = []  # of those, the ones right above it (no blank line between)
    last = ""  # the table of the last line read

    def placed(here: Place) -> list[str]:
        """The comments above a key or header at ``here``: the user's, in order."""
        doc = [line for line in docs.get(here, []) + (docs.get(("top",), []) if here[0] == "header" else []) if line not in block]
        first = len(pending) - len(block)
        earlier = {first + n for n in _earlier_docs(block, doc)}
        return [c for n, c in enumerate(pending) if c not in own and not _UNSET_KEY.fullmatch(c) and n not in earlier]

    for kind, place, i in _read(old):
        line = old_lines[i]
        if kind == "comment":
            pending.append(line.strip())
            block.append(line.strip())
            continue
        if kind == "inside" and line.strip() not in own:  # in the key's value: above the key
            wanted.setdefault(place, []).append(line.strip())
        elif kind == "key":
            inline = _inline_comment(line)
            mine = placed(place) + ([inline] if inline and inline not in own else [])
            if mine:
                wanted.setdefault(place, []).extend(mine)
            pending = []
        elif kind == "table":  # above a table's header: above it again
            if mine := placed(("header", place[1])):
                wanted.setdefault(("header", place[1]), []).extend(mine)
            pending = []
        if kind != "inside":
            block = []
        if kind != "blank" and place[0] != "top":
            last = place[1]
    pending = [c for c in pending if c not in own and not _UNSET_KEY.fullmatch(c)]
    if pending:  # after the last key: the end of its table
        wanted.setdefault(("table", last) if last else ("top",), []).extend(pending)
    if not wanted:
        return new
    return _insert(new, wanted)


def _insert(new: str, wanted: dict[Place, list[str]]) -> str:
    lines = new.splitlines()
    above: dict[int, list[str]] = {}  # line index: comments to put above it
    table_end: dict[str, int] = {}  # table: the index after its last non-blank line
    first_table = None
    headers: dict[str, int] = {}
    for kind, place, i in _read(new):
        if kind == "table":
            headers[place[1]] = i
            first_table = i if first_table is None else first_table
        if kind != "blank":
            table_end[place[1] if place[0] != "top" else ""] = i + 1
        if kind == "key" and place in wanted:
            above.setdefault(i, []).extend(wanted.pop(place))
    at_end: list[str] = []
    for place, comments in list(wanted.items()):
        if place[0] == "top":
            above.setdefault(first_table if first_table is not None else len(lines), []).extend(comments)
        elif place[0] == "header" and place[1] in headers:
            above.setdefault(headers[place[1]], []).extend(comments)
        elif place[0] == "table" and place[1] in table_end:
            # above the next table's header, where a second save reads them again (stable)
            after = [line for line in headers.values() if line >= table_end[place[1]]]
            above.setdefault(min(after) if after else table_end[place[1]], []).extend(comments)
        elif place[0] == "key" and place[1] in table_end:
            above.setdefault(table_end[place[1]], []).extend([f"# (was at {place[2]} =, a key no more)", *comments])
        else:
            at_end.extend([f"# (was in [{place[1].split('#')[0]}], a table no more)", *comments])
    out: list[str] = []
    for i, line in enumerate(lines):
        out.extend(above.get(i, ()))
        out.append(line)
    out.extend(above.get(len(lines), ()))
    if at_end:
        out.extend(["", *at_end])
    return "\n".join(out) + ("\n" if new.endswith("\n") else "")
