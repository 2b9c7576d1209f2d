"""The Merge stats screen: per-block summary and the module table, sorted and filtered."""

from __future__ import annotations

import json

import pytest
from textual.widgets import DataTable

from copylora_tui.app import CopyloraApp
from copylora_tui.cli.main import main as cli
from copylora_tui.screens.stats import StatsScreen
from tests.test_app_support import make_projects, screen_text, use_home, wait_until, write_stats


def module_names(app) -> list[str]:
    table = app.screen.query_one("#modules", DataTable)
    return [str(table.get_row_at(i)[-1]) for i in range(table.row_count)]  # the name is the last column


async def test_stats_of_a_merged_lora_sort_and_filter(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    stats = write_stats(projects / "example-monochrome" / "output" / "example-monochrome.stats.json")
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries and app.screen.summaries[0].stats_path == stats)
        await pilot.press("s")
        assert isinstance(app.screen, StatsScreen)
        text = screen_text(app)
        assert "example-monochrome.safetensors" in text and "6 modules" in text and "Δ1=+1·example-monochrome_B" in text
        blocks = app.screen.query_one("#blocks", DataTable)
        assert app.screen.view == "lbw" and blocks.row_count == 5 and str(blocks.get_row_at(0)[0]) == "IN04"
        assert module_names(app)[0] == "up2_res0_conv1"  # lowest energy kept first
        assert "sort energy ↑" in screen_text(app)
        await pilot.press("s")  # the next column: truncation error, largest first
        assert app.screen.sort == "error" and module_names(app)[0] == "up2_res0_conv1"
        await wait_until(pilot, lambda: "sort error ↓" in screen_text(app))  # the values go down the rows ("↑" it said)
        app.screen.sort = "norm"
        await pilot.press("r")
        assert module_names(app)[0].startswith("down1_att0_proj_in")  # smallest ‖Δ‖ first when reversed
        await wait_until(pilot, lambda: "sort ‖Δ‖ ↑" in screen_text(app))
        await pilot.press("b")  # first block filter: the "IN" group
        assert app.screen.block == "IN" and len(module_names(app)) == 2
        await pilot.press("b", "k")
        assert app.screen.block == "OUT" and app.screen.kind == "conv1x1" and module_names(app) == []
        await wait_until(pilot, lambda: "0 of 6" in screen_text(app))
        await pilot.press("k", "k", "k", "v")  # every kind again; U-Net levels: the shared group stays, in their naming
        assert app.screen.view == "unet" and app.screen.block == "out" and len(module_names(app)) == 3
        await wait_until(pilot, lambda: "block (U-Net)" in screen_text(app))
        assert blocks.row_count == 4 and [str(blocks.get_row_at(i)[0]) for i in range(4)] == ["in1", "mid", "out2", "out3"]
        await pilot.press("b", "b")  # out -> in1 -> mid
        assert app.screen.block == "mid" and module_names(app) == ["mid.att0_tb0_attn2_to_k"]
        await pilot.press("b", "v")  # a single block does not carry over to the other naming
        assert app.screen.view == "lbw" and app.screen.block is None and len(module_names(app)) == 6
        await wait_until(pilot, lambda: "block (LBW)" in screen_text(app))
        await pilot.press("escape")
        assert not isinstance(app.screen, StatsScreen)


async def test_missing_or_broken_stats_file_is_a_message(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    broken = tmp_path / "x.stats.json"
    broken.write_text("{not json")
    app = CopyloraApp(make_projects(tmp_path))
    async with app.run_test(size=(100, 30)) as pilot:
        app.action_open_stats(broken)
        # (the message may wrap at a long tmp path: compare with the line breaks folded)
        await wait_until(pilot, lambda: "unreadable statistics" in " ".join(screen_text(app).split()))


MALFORMED = [
    ({"modules": [{"name": "x"}]}, "modules[0].block is missing"),
    ({"file": "x.safetensors"}, "no 'modules' list"),
    ([1, 2, 3], "JSON list"),
    ({"modules": [], "blocks": [{"block": "in1", "modules": "two"}]}, "blocks[0].modules"),
    ({"modules": [], "inputs": [{"file": 3, "ratio": 1}]}, "inputs[0].file"),
    # the LoRA Block Weight fields are optional (older files lack them), but checked where present
    ({"modules": [], "lbw_blocks": [{"block": "IN04"}]}, "lbw_blocks[0].modules is missing"),
    ({"modules": [{"name": "x", "block": "in1", "kind": "linear", "shape": [4, 4], "input_ranks": [4], "kept_rank": 4, "energy_kept": 1,
                   "rel_error": 0, "result_norm": 1, "input_norms": [1], "lbw_block": 4}]}, "modules[0].lbw_block is 4"),
    ({"modules": [], "inputs": [{"file": "B.safetensors", "ratio": 1, "lbw": [1, "x"]}]}, "inputs[0].lbw is not a list of numbers"),
]



@pytest.mark.parametrize("document,problem", MALFORMED)
def test_malformed_stats_is_one_line_in_the_cli(tmp_path, capsys, document, problem):
    path = tmp_path / "x.stats.json"
    path.write_text(json.dumps(document))
    assert cli(["stats", str(path)]) == 2
    err = capsys.readouterr().err
    assert problem in err and "not a copylora statistics file" in err and "internal error" not in err



async def test_malformed_stats_is_a_message_in_the_stats_panel(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    stats = write_stats(projects / "example-monochrome" / "output" / "example-monochrome.stats.json")
    document = json.loads(stats.read_text())
    del document["modules"][2]["kind"]
    stats.write_text(json.dumps(document))
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries and app.screen.summaries[0].stats_path == stats)
        await pilot.press("s")
        assert isinstance(app.screen, StatsScreen)
        await wait_until(pilot, lambda: "modules[2].kind is missing" in " ".join(screen_text(app).split()))
        await pilot.press("s", "r", "b", "k", "v", "enter")  # the keys of an unshowable file do nothing
        assert app.is_running and app._exception is None
        await pilot.press("escape")
        assert not isinstance(app.screen, StatsScreen)


async def test_a_value_only_another_view_cannot_show_is_a_message_not_the_end(tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    stats = write_stats(projects / "example-monochrome" / "output" / "example-monochrome.stats.json")
    document = json.loads(stats.read_text())
    document["blocks"][0]["energy_kept"] = 10**400  # in the U-Net levels' summary only: the first view draws
    stats.write_text(json.dumps(document))
    app = CopyloraApp(projects)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries and app.screen.summaries[0].stats_path == stats)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, StatsScreen) and app.screen.document is not None)
        await pilot.press("v")  # OverflowError from the switched view's redraw ended the app
        await wait_until(pilot, lambda: "cannot show these statistics" in " ".join(screen_text(app).split()))
        await pilot.press("s", "r", "v")
        assert app.is_running and app._exception is None


async def test_module_names_keep_their_tails_in_80_columns(tmp_path, monkeypatch):
    """At 80 columns the names were cut at the right edge ("down0_att0_tb0_at" on row after row,
    the layer that tells them apart gone): cut at their start instead, the table within the screen."""
    from copylora_tui.core.stats_table import short_name

    use_home(monkeypatch, tmp_path)
    projects = make_projects(tmp_path)
    stats = write_stats(projects / "example-monochrome" / "output" / "example-monochrome.stats.json")
    app = CopyloraApp(projects)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_until(pilot, lambda: app.screen.summaries and app.screen.summaries[0].stats_path == stats)
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, StatsScreen) and module_names(app))
        names = module_names(app)
        table = app.screen.query_one("#modules", DataTable)
        assert table.virtual_size.width <= table.size.width
        full = {short_name(m["name"]) for m in json.loads(stats.read_text())["modules"]}
        assert len(set(names)) == len(names) and any(n.startswith("…") for n in names)
        assert all(any(f.endswith(n.lstrip("…")) for f in full) for n in names)
        await pilot.resize_terminal(160, 24)  # room: whole names again
        await wait_until(pilot, lambda: set(module_names(app)) == full)
