"""A DataTable whose columns are sized when its rows are set, not later on idle.

Why not Textual's auto-width columns: DataTable measures new cells only in its ``_on_idle``,
and it caches rendered cells under a counter that this measuring does not advance. A repaint
that lands between ``add_row`` and the table's idle (the app repaints on its own timer, and
under load it often comes first) caches the cells cut to the old widths, and they stay cut
until something else changes the table: the Projects table showed ``q  q  queue`` for
"queued", the job table "interrup" for a job that changes no more (Textual 8.2). Widths
computed here, before the rows go in, make the first paint right, and let columns shrink
again when their widest cell goes.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.binding import Binding
from textual.coordinate import Coordinate
from textual.widgets import DataTable
from textual.widgets.data_table import ColumnKey, RowKey

# (key, label, width): a width of None fits the column to its label and cells.
ColumnSpec = tuple[str, str, "int | None"]


def plain(value: object) -> object:
    """A cell as DataTable should draw it: a str as plain text. DataTable reads a str cell as
    markup, so a project folder named "[bold]x" showed as "x", and one named "[@click=app.quit]q"
    as a "q" that quit the app when clicked."""
    return Text(value) if isinstance(value, str) else value


def cell_width(value: object) -> int:
    """Terminal cells one line of a cell takes (the tables here hold one-line cells)."""
    if isinstance(value, Text):
        return value.cell_len
    return max((cell_len(line) for line in str(value).splitlines()), default=0)


def fitted_widths(columns: Sequence[ColumnSpec], rows: Sequence[Sequence[object]]) -> list[int]:
    """Each column's width: its fixed width, else the widest of its label and its cells."""
    widths = []
    for index, (_key, label, width) in enumerate(columns):
        if width is not None:
            widths.append(width)
            continue
        widths.append(max([cell_width(label), *(cell_width(row[index]) for row in rows)]))
    return widths


class FittedTable(DataTable):
    """``show`` replaces every row; the columns are rebuilt only when a width or label moves."""

    # DataTable's home and end scroll sideways, which a table of rows that fit does not need:
    # with 150 projects they did nothing, where a list's first and last row are what is looked for.
    BINDINGS = [
        Binding("home", "first_row", "First", show=False),
        Binding("end", "last_row", "Last", show=False),
    ]

    def action_first_row(self) -> None:
        if self.cursor_type == "row" and self.row_count:
            self.move_cursor(row=0)
        else:
            self.action_scroll_home()

    def action_last_row(self) -> None:
        if self.cursor_type == "row" and self.row_count:
            self.move_cursor(row=self.row_count - 1)
        else:
            self.action_scroll_end()

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self._shown_columns: list[tuple[str, str, int]] = []

    def show(self, columns: Sequence[ColumnSpec], rows: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Show ``rows`` (row key, cells in the columns' order) under ``columns``. The cursor
        goes back to the top: callers that keep a selection move it after."""
        widths = fitted_widths(columns, [cells for _key, cells in rows])
        wanted = [(key, label, width) for (key, label, _fixed), width in zip(columns, widths)]
        if wanted != self._shown_columns:
            self.clear(columns=True)
            for key, label, width in wanted:
                self.add_column(label, key=key, width=width)
            self._shown_columns = wanted
        else:
            self.clear()
        for key, cells in rows:
            self.add_row(*map(plain, cells), key=key)

    def set_cell(self, row_key: str, column_key: str, value: object) -> None:
        """``update_cell`` that repaints only the cell. DataTable.update_cell repaints the whole
        table (Textual 8.2 calls ``refresh()`` with no region), so a job's progress, speed and
        ETA moving twice a second sent every row of the Queue screen to the terminal again:
        ~7.7 KB/s over SSH for a few changed cells. Its caches are keyed on ``_update_count``,
        so bumping it and repainting the cell's region draws the new value. Where a Textual
        lacks those attributes, the plain update_cell still draws it right."""
        data, locations = getattr(self, "_data", None), getattr(self, "_row_locations", None)
        if data is None or locations is None or not hasattr(self, "_update_count"):
            self.update_cell(row_key, column_key, value)
            return
        row, column = RowKey(row_key), ColumnKey(column_key)
        if row not in data or column not in self._column_locations:
            self.update_cell(row_key, column_key, value)  # raises CellDoesNotExist, as it should
            return
        data[row][column] = value
        self._update_count += 1
        self.refresh_coordinate(Coordinate(locations.get(row), self._column_locations.get(column)))

    def content_room(self, columns: int, rows: int) -> int | None:
        """The cells ``columns`` columns' contents share across this table with ``rows`` rows
        (each column's padding, and a scroll bar where the rows overflow, taken off); None before
        the table is laid out. Where the contents are wider, a caller cuts a column to fit."""
        if not self.size.width:
            return None
        scrollbar = self.styles.scrollbar_size_vertical if rows > self.size.height - 1 else 0
        return self.size.width - 2 * self.cell_padding * columns - scrollbar

    def column_widths(self) -> dict[str, int]:
        return {key: width for key, _label, width in self._shown_columns}
