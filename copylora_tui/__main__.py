import sys

from copylora_tui.cli.entry import console

sys.exit(console())
