"""Render a report.html in headless Chromium and save a screenshot; check it is not blank.

    python scripts/screenshot_report.py results/sweeps/<sweep>/report/report.html out.png

Needs Debian's `chromium` (apt-get install chromium). Exits 1 if the screenshot is missing or
blank (nearly one colour), 2 on bad arguments or when no browser is installed.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def browser() -> str | None:
    """The first headless-capable Chromium on PATH, or None."""
    return next((b for b in map(shutil.which, BROWSERS) if b), None)


def screenshot(page: Path, out: Path, *, width: int = 1400, height: int = 2000,
               timeout: float = 120.0) -> Path:
    """Render `page` (an HTML file) with headless Chromium into the PNG `out`."""
    exe = browser()
    if exe is None:
        raise FileNotFoundError(f"no browser found (looked for {', '.join(BROWSERS)})")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--no-first-run", "--hide-scrollbars", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", f"--screenshot={out.resolve()}",
             page.resolve().as_uri()],
            check=True, capture_output=True, timeout=timeout,
        )
    return out


def blankness(png: Path) -> tuple[float, int]:
    """(fraction of pixels that differ from the most common colour, number of distinct colours)."""
    import matplotlib.image as mpimg

    img = (mpimg.imread(png)[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    colours, counts = np.unique(img, axis=0, return_counts=True)
    return 1.0 - counts.max() / counts.sum(), len(colours)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("report", type=Path, help="report.html")
    p.add_argument("out", type=Path, help="screenshot PNG to write")
    p.add_argument("--width", type=int, default=1400)
    p.add_argument("--height", type=int, default=2000)
    a = p.parse_args(argv)
    if not a.report.is_file():
        print(f"error: no such file: {a.report}", file=sys.stderr)
        return 2
    if browser() is None:
        print("error: no chromium on PATH; apt-get install chromium", file=sys.stderr)
        return 2
    screenshot(a.report, a.out, width=a.width, height=a.height)
    ink, n = blankness(a.out)
    print(f"screenshot: {a.out} ({ink:.1%} of pixels off the background, {n} colours)")
    return 0 if ink > 0.02 and n > 16 else 1


if __name__ == "__main__":
    sys.exit(main())
