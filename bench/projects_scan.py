"""How long the Projects screen's look at a folder of trained projects takes.

    python bench/projects_scan.py [--copies 10] [--work DIR]

Builds the tests' real-runs tree once (tests/real_runs.py: projects trained by the worker,
about half a minute), copies its projects ``--copies`` times into one folder, and times
``scan_projects`` there three times in this process: the first look, then the looks the app
repeats (what the app keeps between looks is kept here too)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=10, help="copies of the tree's projects (default 10: 80 projects)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/copylora-projects-scan"), help="where the tree is built (kept)")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    tree = args.work / "tree"
    if not (tree / "built").exists():
        from tests.real_runs import build

        shutil.rmtree(tree, ignore_errors=True)
        tree.mkdir(parents=True)
        build(tree)
        (tree / "built").touch()
    many = args.work / f"projects-x{args.copies}"
    if not many.exists():
        many.mkdir()
        for n in range(args.copies):
            for project in (tree / "projects").iterdir():
                if project.is_dir():
                    shutil.copytree(project, many / f"{project.name}-{n}", symlinks=True)
    os.environ["COPYLORA_HOME"] = str(tree / "state")
    from copylora_tui.core.projects import scan_projects

    for look in ("first", "second", "third"):
        start = time.perf_counter()
        found = scan_projects(many)
        print(f"{look} look: {len(found)} projects in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
