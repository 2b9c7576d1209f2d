"""A monkey at the keyboard: seeded random keys on every screen, over the state real runs
leave behind (``tests/real_runs.py``). It fails on any exception in the app.

Each screen gets its own keys (its bindings, the movement keys, the global 1/2/3, escape,
enter, and for the form letters, digits and editing keys), so most keys act on the screen
under test; 1/2/3 and escape let it wander to the others too. Quitting keys are left out
(q, ctrl+q, ctrl+c, and the palette, whose "Quit" a random string can reach). Keys are sent
in bursts without waiting for idle between them: faster than a person, so races show up.

A failure names the screen, the seed and the keys that preceded it: ``MONKEY_SEED=N`` and
``MONKEY_KEYS=N`` replay it.
"""

from __future__ import annotations

import os
import random
import string
import time

import pytest
from textual.widgets import DataTable

from copylora_tui.app import CopyloraApp
from copylora_tui.screens.monitor import MonitorScreen
from copylora_tui.screens.project import ProjectScreen
from copylora_tui.screens.projects import ProjectsScreen
from copylora_tui.screens.queue import QueueScreen
from copylora_tui.screens.stats import StatsScreen
from tests.app_keys import send_keys, settled
from tests.test_app_support import wait_until

KEYS = int(os.environ.get("MONKEY_KEYS", "1000"))
SEED = int(os.environ.get("MONKEY_SEED", "20261127"))
# Per screen, a ceiling only: 1000 keys take ~30 s with the machine to themselves; beside a second
# test process (`pytest -n 2`) 500 to 950 of them went in the old 45 s. All of them must be sent.
TIME_LIMIT_S = 150.0
BURST = 50

MOVE = ["up", "down", "left", "right", "home", "end", "pageup", "pagedown", "tab", "shift+tab", "enter", "escape", "space"]
GLOBAL = ["1", "2", "3"]
SCREENS = {
    "projects": ["n", "o", "r", "d", "s", "f5", "y", "o"],
    "queue": ["m", "c", "r", "p", "K", "J", "w", "shift+up", "shift+down"],
    "monitor": ["c", "p", "r", "s", "v", "o"],
    "project": ["ctrl+s", "ctrl+r", "ctrl+t", "ctrl+o", "backspace", "delete", "-", ".", ",", "[", "]", "/", "=", '"',
                *string.ascii_lowercase.replace("q", ""), *string.digits],
    "stats": ["s", "r", "b", "k", "v"],
}


async def open_screen(pilot, name: str) -> None:
    app = pilot.app
    await wait_until(pilot, lambda: isinstance(app.screen, ProjectsScreen) and app.screen.summaries, timeout=20)
    folders = [s.folder.name for s in app.screen.summaries]
    table = app.screen.query_one("#projects", DataTable)
    if name == "queue":
        await pilot.press("2")
        await wait_until(pilot, lambda: isinstance(app.screen, QueueScreen))
    elif name == "monitor":
        running = next(j for j in app.snapshot.jobs if j.live)
        app.action_show_monitor(running.id)
        await wait_until(pilot, lambda: isinstance(app.screen, MonitorScreen))
    elif name == "project":
        table.move_cursor(row=folders.index("mono"))
        await pilot.press("o")
        await wait_until(pilot, lambda: isinstance(app.screen, ProjectScreen))
    elif name == "stats":
        table.move_cursor(row=folders.index("mono"))
        await pilot.press("s")
        await wait_until(pilot, lambda: isinstance(app.screen, StatsScreen))


@pytest.mark.parametrize("screen", list(SCREENS))
async def test_random_keys_never_end_the_app(real_runs, screen):
    rng = random.Random(f"{SEED}-{screen}")
    pool = SCREENS[screen] * 3 + MOVE * 2 + GLOBAL  # weights: the screen's own keys first
    keys = [rng.choice(pool) for _ in range(KEYS)]
    app = CopyloraApp(real_runs, poll_s=0.2)
    sent = 0
    started = time.monotonic()
    async with app.run_test(size=(100, 30)) as pilot:
        await open_screen(pilot, screen)
        while sent < len(keys) and time.monotonic() - started < TIME_LIMIT_S:
            burst = keys[sent : sent + BURST]
            await send_keys(pilot, burst)
            sent += len(burst)
            if app._exception is not None or not app.is_running:
                raise AssertionError(
                    f"the app ended on the {screen} monkey (MONKEY_SEED={SEED}, key {sent} of {KEYS}); "
                    f"last keys: {keys[max(0, sent - 40):sent]}: {app._exception!r}"
                )
        await settled(pilot)
    assert sent >= min(KEYS, 1000), f"only {sent} keys in {TIME_LIMIT_S} s: the monkey got too slow to mean much"
