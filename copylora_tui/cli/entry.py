"""The ``copylora`` executable's entry point: as little as can be before Ctrl-C is handled.

A Ctrl-C in the first tenth of a second of a command (while its modules import, before
:func:`copylora_tui.cli.main.run_guarded` takes over) printed Python's KeyboardInterrupt
traceback. Everything from the import of the command line on now ends as any interrupted
command does: "copylora: interrupted", exit 130.
"""

from __future__ import annotations

import sys

EXIT_INTERRUPTED = 130  # copylora_tui.cli.exit_codes, not imported: this module imports nothing of ours


def console() -> int:
    try:
        from copylora_tui.cli.main import console as run

        return run()
    except KeyboardInterrupt:
        print("copylora: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(console())
