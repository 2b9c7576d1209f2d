"""Rich tables for ``copylora stats``: the per-block summary (LBW blocks or U-Net levels),
then the selected modules."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from copylora_tui.cli.console import output_console
from copylora_tui.core.formatting import block_bar as bar
from copylora_tui.core.stats_table import VIEWS, block_of, block_summary, short_name
from engine.project.pair_route import PAIR_METHODS


def print_stats(document: dict, rows: list[dict], console: Console | None = None, view: str = "lbw") -> None:
    console = console or output_console()
    inputs = document.get("inputs", [])
    described = ", ".join(f"Δ{n}={i['ratio']:+g}·{i['file']}" for n, i in enumerate(inputs, 1))
    # File and module names come from the files (anyone's LoRA): escaped, never read as markup.
    console.print(f"[bold]{escape(str(document.get('file', '')))}[/bold]  {escape(str(document.get('family', '')))}  "
                  f"{len(document['modules'])} modules  = {escape(described)}")
    route = document.get("route")
    if isinstance(route, dict) and route.get("method") == "differential" and isinstance(route.get("base_weights"), dict):
        base = route["base_weights"]  # Δ1 is B, trained on the base with A applied: no subtraction
        console.print(f"route: differential (B trained on the base + {escape(str(base.get('file')))} at {base.get('multiplier')})", highlight=False)
    elif isinstance(route, dict) and route.get("method") in PAIR_METHODS and inputs:  # one LoRA on the pair, at its multiplier
        console.print(f"route: {escape(str(route['method']))} (one LoRA trained on the pair, written at its training multiplier "
                      f"{inputs[0].get('ratio')}: strength 1 is the change once)", highlight=False)
    for n, i in enumerate(inputs, 1):
        if isinstance(i.get("lbw"), list):  # merged with block weights (copylora merge --lbws)
            console.print(f"Δ{n} block weights ({len(i['lbw'])}): " + ",".join(f"{w:g}" for w in i["lbw"]), highlight=False)

    blocks = Table(title=f"per block ({VIEWS[view][0]})", box=None, header_style="bold", title_justify="left")
    blocks.add_column("block")
    blocks.add_column("modules", justify="right")
    blocks.add_column("energy kept", no_wrap=True)
    for n, _ in enumerate(inputs, 1):
        blocks.add_column(f"‖Δ{n}‖", justify="right")
    blocks.add_column("‖result‖", justify="right", no_wrap=True)
    summary = block_summary(document, view)
    biggest = max((b["result_norm"] for b in summary), default=0.0) or 1.0
    for b in summary:
        blocks.add_row(
            b["block"], str(b["modules"]), f"{bar(b['energy_kept'], 8)} {b['energy_kept']:.4f}",
            *(f"{n:.4g}" for n in b["input_norms"]), f"{bar(b['result_norm'] / biggest, 6)} {b['result_norm']:.4g}",
        )
    console.print(blocks)

    wide = console.width >= 100  # the shape column only where there is room for it
    # one space between columns: with two, the cos column got no room at 80 columns (a bare "+")
    table = Table(box=None, header_style="bold", pad_edge=False, collapse_padding=True)
    columns = [("module", "left"), ("block", "left"), ("kind", "left")] + ([("shape", "left")] if wide else []) + [
        ("ranks", "left"), ("kept", "right"), ("energy", "right"), ("error", "right"), ("‖result‖", "right"), ("cos", "right")]
    for column, justify in columns:
        table.add_column(column, justify=justify, overflow="fold" if column == "module" else "ellipsis",
                         no_wrap=column != "module", min_width=24 if column == "module" else None)
    for m in rows:
        cos = "" if m.get("cos_inputs") is None else f"{m['cos_inputs']:+.3f}"
        cells = [escape(short_name(m["name"])), block_of(m, view), m["kind"].replace("conv", "c").replace("linear", "lin")]
        if wide:
            cells.append("x".join(map(str, m["shape"])))
        cells += ["+".join(map(str, m["input_ranks"])), str(m["kept_rank"]), f"{m['energy_kept']:.4f}",
                  f"{m['rel_error']:.1e}", f"{m['result_norm']:.3g}", cos]
        table.add_row(*cells)
    console.print(table)
    if rows:
        console.print("energy = Σ kept σ² / Σ σ²; error = ‖ΔW − kept‖/‖ΔW‖; cos = cos(Δ1, Δ2) of the files as trained, before their ratios", style="dim")
