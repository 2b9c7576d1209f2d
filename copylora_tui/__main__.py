import sys

from copylora_tui.cli.main import main

sys.exit(main())
