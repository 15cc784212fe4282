"""Start-up cost of the plugin's hook: what every Python interpreter pays once the plugin is installed.

Usage: python benchmarks/startup.py [--runs 20]
Prints the median cumulative import time of `ultralytics_slim._hook` (which imports the package itself) as reported
by `python -X importtime -c pass`, and checks that neither torch nor Ultralytics is imported at start-up.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    costs = []
    for _ in range(runs):
        err = subprocess.run(
            [sys.executable, "-X", "importtime", "-c", "pass"], check=False, capture_output=True, text=True
        ).stderr
        match = re.search(r"import time:\s+\d+ \|\s+(\d+) \|\s+ultralytics_slim\._hook", err)
        if not match:
            sys.exit("ultralytics_slim._hook was not imported at start-up: is the plugin installed?")
        costs.append(int(match.group(1)))
    heavy = subprocess.run(
        [sys.executable, "-c", "import sys; print(sorted({'torch', 'ultralytics'} & set(sys.modules)))"],
        check=False,
        capture_output=True,
        text=True,
    ).stdout.strip()
    print(
        f"start-up hook: median {statistics.median(costs) / 1000:.2f} ms, min {min(costs) / 1000:.2f} ms over {runs} runs; "
        f"heavy modules imported at start-up: {heavy}"
    )


if __name__ == "__main__":
    main()
