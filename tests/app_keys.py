"""Key presses for long pilot runs: sent as the terminal would send them, then waiting only
until the screen has handled its pending messages.

``Pilot.press`` also waits, twice per key, until the process has been idle for a moment; with
the app's polling threads that takes about 0.1 s a key, which makes a few thousand keys (the
monkey test) take minutes. Here a key costs a few milliseconds, and keys may arrive while the
app is still busy with the previous ones, as they do from a fast typist or a pasted string.
"""

from __future__ import annotations

import asyncio

from textual import events


def key_event(key: str) -> events.Key:
    """The event a terminal key makes (as ``App._press_keys`` builds it)."""
    from textual.app import _character_to_key

    if len(key) == 1 and not key.isalnum():
        key = _character_to_key(key)
    char = key if len(key) == 1 else (" " if key == "space" else None)
    return events.Key(key, char)


async def send_keys(pilot, keys, *, settle: bool = True) -> None:
    app = pilot.app
    for key in keys:
        event = key_event(key)
        event.set_sender(app)
        app._driver.send_message(event)
        await asyncio.sleep(0)
    if settle:
        await settled(pilot)


async def settled(pilot) -> None:
    """The screen (and a screen it pushed) has handled what was sent."""
    for _ in range(2):
        try:
            await pilot._wait_for_screen(timeout=10)
        except Exception:  # the app ended: the caller looks at app._exception
            return
        await asyncio.sleep(0.001)
