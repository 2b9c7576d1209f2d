"""The per-layer statistics of a merge: which layers carry the A→B change, and how much of
it the new rank keeps.

Top: one row per block with bars for the energy kept and the size of the merged change ‖Δ‖
relative to the largest block; the blocks are LoRA Block Weight blocks (BASE, IN01…, M00,
OUT03…) or U-Net levels (te, in0…, mid, out0…), v switches. Below: every module, sortable by
any column (s cycles, or click a heading; r reverses) and filtered by block (b) and kind (k).
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Static

from copylora_tui.core.formatting import block_bar, figure
from copylora_tui.core.stats_table import (
    COLUMNS,
    VIEWS,
    block_filters,
    block_of,
    block_summary,
    kind_filters,
    load_stats,
    short_name,
    sorted_rows,
)
from copylora_tui.widgets.app_footer import AppFooter
from copylora_tui.widgets.app_header import AppHeader
from copylora_tui.widgets.fitted_table import FittedTable, fitted_widths
from copylora_tui.widgets.guard import ActsWhileOpen, while_open
from engine.errors import ValidationError

# The modules table's columns, the module's name last: the figures are narrow and all fit in
# 80 columns, while a name may not (it is cut at the right edge, the table scrolls to it).
ORDER = ("block", "kind", "ranks", "kept", "energy", "error", "norm", "cos", "name")


def left_cut(name: str, width: int) -> str:
    """``name`` in ``width`` cells, cut at its start ("…tb0_attn1_to_q")."""
    return name if len(name) <= width else "…" + name[len(name) - width + 1:]


LARGEST_FIRST = {"error", "norm", "kept"}  # sorts whose rows start at the largest value (engine: stats_table.COLUMNS)


class StatsScreen(ActsWhileOpen, Screen):
    BINDINGS = [
        Binding("escape", "back", "Back", id="stats.back"),
        Binding("s", "cycle_sort", "Sort", id="stats.sort"),
        Binding("r", "reverse", "Reverse", id="stats.reverse"),
        Binding("b", "cycle_block", "Block", id="stats.block"),
        Binding("k", "cycle_kind", "Kind", id="stats.kind"),
        Binding("v", "switch_view", "View", id="stats.view"),  # blocks by LBW name or U-Net level
    ]

    def __init__(self, stats_path: Path) -> None:
        super().__init__()  # no id: a screen of this kind may still be leaving when the next arrives
        self.stats_path = Path(stats_path)
        self.document: dict | None = None
        self.sort = "energy"
        self.reverse = False
        self.block: str | None = None
        self.kind: str | None = None
        self.view = "lbw"  # blocks by LoRA Block Weight name, or "unet" levels

    def compose(self) -> ComposeResult:
        yield AppHeader()
        yield Static("", id="stats-summary", classes="status-line")
        yield FittedTable(id="blocks", cursor_type="row")
        yield Static("", id="stats-filter", classes="status-line")
        yield FittedTable(id="modules", cursor_type="row")
        yield AppFooter()

    @while_open
    def on_mount(self) -> None:
        self.title = "Merge stats"
        self.sub_title = self.stats_path.name
        self.query_one("#stats-summary", Static).update(Text(f"reading {self.stats_path.name} …", style="dim"))
        self.load()

    @work(thread=True, exclusive=True, group="stats-load", exit_on_error=False)
    def load(self) -> None:
        """Read and check the statistics (an SDXL merge's file holds a thousand modules)."""
        try:
            document, problem = load_stats(self.stats_path), None
        except ValidationError as exc:
            document, problem = None, str(exc.problems[0])
        except Exception as exc:  # said on the screen, not lost in the thread
            document, problem = None, f"{self.stats_path}: cannot read it ({type(exc).__name__}: {exc})"
        self.post_message(self.Loaded(document, problem))

    class Loaded(Message, bubble=False):
        """The statistics read in a thread, or why not; Textual drops it if the screen has closed."""

        def __init__(self, document: dict | None, problem: str | None) -> None:
            super().__init__()
            self.document, self.problem = document, problem

    def on_stats_screen_loaded(self, message: Loaded) -> None:
        self._loaded(message.document, message.problem)

    def _loaded(self, document: dict | None, problem: str | None) -> None:
        if problem is not None:
            self.show_problem(problem)
            return
        self.document = document
        try:
            self.show_summary()
            self.show_blocks()
            self.show_modules()
        except Exception as exc:  # a document the checks let through but the views cannot show
            self.show_problem(f"{self.stats_path}: cannot show these statistics ({type(exc).__name__}: {exc})")
            return
        self.query_one("#modules", FittedTable).focus()

    def redraw(self, blocks: bool = False) -> None:
        """The tables again after a key (sort, filter, view). A value the checks let through
        but a view cannot show (an integer too large for a float) is said like the first
        draw's, not raised out of the key's action (which ends the app)."""
        try:
            if blocks:
                self.show_blocks()
            self.show_modules()
        except Exception as exc:
            self.show_problem(f"{self.stats_path}: cannot show these statistics ({type(exc).__name__}: {exc})")

    def show_problem(self, message: str) -> None:
        """The file cannot be shown: say why in the summary line; the keys do nothing."""
        self.document = None
        self.query_one("#stats-summary", Static).update(Text(message, style="red"))

    def show_summary(self) -> None:
        doc = self.document
        inputs = doc.get("inputs", [])
        parts = " ".join(f"Δ{n}={i['ratio']:+g}·{i['file']}" for n, i in enumerate(inputs, 1))
        seconds = f"  ·  {doc['seconds']:.2f} s" if doc.get("seconds") is not None else ""
        self.query_one("#stats-summary", Static).update(
            Text.assemble((doc.get("file", self.stats_path.name), "bold"), f"  {doc.get('family', '')}  {len(doc['modules'])} modules  ·  {parts}{seconds}")
        )

    def show_blocks(self) -> None:
        blocks = block_summary(self.document, self.view)
        biggest = max((b["result_norm"] for b in blocks), default=0.0) or 1.0
        columns = [("block", f"block ({VIEWS[self.view][0]})", None), ("modules", "modules", None), ("energy", "energy kept", None),
                   ("norm", "‖Δ‖ (merged change)", None)]
        rows = [(b["block"], [
            b["block"], Text(str(b["modules"]), justify="right"),
            Text.assemble((block_bar(b["energy_kept"], 10), "green"), f" {b['energy_kept']:.4f}"),
            Text.assemble((block_bar(b["result_norm"] / biggest, 10), "cyan"), f" {figure(b['result_norm'])}"),
        ]) for b in blocks]
        self.query_one("#blocks", FittedTable).show(columns, rows)

    def show_modules(self) -> None:
        rows = sorted_rows(self.document, sort=self.sort, reverse=self.reverse, block=self.block, kind=self.kind, view=self.view)
        cells_of = []
        for m in rows:
            cos = "" if m.get("cos_inputs") is None else f"{m['cos_inputs']:+.3f}"
            cells = {
                "name": short_name(m["name"]),
                "block": block_of(m, self.view),
                "kind": m["kind"].replace("conv", "c").replace("linear", "lin"),
                "ranks": "+".join(map(str, m["input_ranks"])),
                "kept": Text(str(m["kept_rank"]), justify="right"),
                "energy": Text(f"{m['energy_kept']:.4f}", justify="right", style="yellow" if m["energy_kept"] < 0.9 else ""),
                "error": Text(f"{m['rel_error']:.1e}", justify="right"),
                "norm": Text(figure(m["result_norm"]), justify="right"),
                "cos": Text(cos, justify="right"),
            }
            cells_of.append((m["name"], [cells[key] for key in ORDER]))
        table = self.query_one("#modules", FittedTable)
        specs = [(key, COLUMNS[key][0], None) for key in ORDER]
        room = self._name_room(table, specs, cells_of)
        if room is not None:  # the names' heads say the block, which has its column: their tails tell modules apart
            cells_of = [(key, [*cells[:-1], left_cut(cells[-1], room)]) for key, cells in cells_of]
        table.show(specs, cells_of)
        # the order of the values shown: error, ‖Δ‖ and kept sort largest first (their keys are
        # negated), so "↑" beside ‖Δ‖ read as the opposite of the rows
        arrow = "↓" if (self.sort in LARGEST_FIRST) != self.reverse else "↑"
        self.query_one("#stats-filter", Static).update(
            Text.assemble(
                ("modules ", "bold"), f"{len(rows)} of {len(self.document['modules'])}",
                f"  ·  sort {COLUMNS[self.sort][0]} {arrow}  ·  block {self.block or 'all'}  ·  kind {self.kind or 'all'}",
                ("   energy = Σ kept σ²/Σ σ², error = ‖ΔW−kept‖/‖ΔW‖"
                 + (", cos = cos(Δ1, Δ2) before ratios" if len(self.document.get("inputs") or []) > 1 else ""), "dim"),  # one input: no cos
            )
        )

    @staticmethod
    def _name_room(table: FittedTable, specs: list, rows: list) -> int | None:
        """The columns the module names have beside the figures, where the table is narrower
        than all of it (None: the names fit, or the table is not laid out yet). At 80 columns
        the names were cut at the right edge, "down0_att0_tb0_at" on row after row."""
        room = table.content_room(len(specs), len(rows))
        if room is None or not rows:
            return None
        widths = fitted_widths(specs, [cells for _key, cells in rows])
        room -= sum(widths[:-1])
        return max(room, 12) if widths[-1] > room else None

    def on_resize(self) -> None:
        if self.document:
            self.show_modules()

    # ------------------------------------------------------------------ actions

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if event.data_table.id != "modules" or not self.document:
            return
        key = str(event.column_key.value)
        self.reverse = not self.reverse if key == self.sort else False
        self.sort = key
        self.redraw()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "blocks" and self.document:  # enter on a block: show its modules
            block = str(event.row_key.value)
            self.block = None if self.block == block else block
            self.redraw()

    def action_cycle_sort(self) -> None:
        if not self.document:
            return
        keys = list(COLUMNS)
        self.sort = keys[(keys.index(self.sort) + 1) % len(keys)]
        self.reverse = False
        self.redraw()

    def action_reverse(self) -> None:
        if not self.document:
            return
        self.reverse = not self.reverse
        self.redraw()

    def _cycle(self, current: str | None, options: list[str]) -> str | None:
        cycle = [None, *options]
        return cycle[(cycle.index(current) + 1) % len(cycle)] if current in cycle else None

    def action_cycle_block(self) -> None:
        if self.document:
            self.block = self._cycle(self.block, block_filters(self.document, self.view))
            self.redraw()

    def action_switch_view(self) -> None:
        """LBW blocks <-> U-Net levels; a block filter is dropped unless it is a group both
        namings share (in/IN, out/OUT, mid/M00: the same modules)."""
        if not self.document:
            return
        self.view = "unet" if self.view == "lbw" else "lbw"
        if self.block is not None:
            shared = self.block.lower() in ("in", "out", "mid")
            self.block = (self.block.upper() if self.view == "lbw" else self.block.lower()) if shared else None
        self.redraw(blocks=True)

    def action_cycle_kind(self) -> None:
        if self.document:
            self.kind = self._cycle(self.kind, kind_filters(self.document))
            self.redraw()

    def action_back(self) -> None:
        if not self.app.close_keys_panel():
            self.app.close_screen(self)
