import sys

from copylora_tui.cli.main import console

sys.exit(console())
