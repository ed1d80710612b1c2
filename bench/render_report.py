"""Render a run's HTML report in a real browser (headless Chromium) and check it.

    python bench/render_report.py RUN_DIR [--png OUT.png] [--width 1280] [--height 4000]
    python bench/render_report.py --demo [--png OUT.png]   # makes a small run first

1. Writes the report (``lemo-nade report RUN_DIR``) unless ``--no-write``.
2. Loads ``RUN_DIR/report/report.html`` from ``file://`` with ``chromium --headless
   --dump-dom``. The page's inline script sets ``data-images-ok`` and
   ``data-images-loaded="N/M"`` on ``<body>`` once every ``<img>`` is ``complete`` with a
   ``naturalWidth > 0``; the dumped DOM is parsed for them. The page's
   Content-Security-Policy (``default-src 'none'; img-src data:``) means any external
   reference would fail to load, so a pass also shows the page is self-contained.
3. Takes a screenshot (``--screenshot``) to ``--png`` to look at.

Prints one JSON object (images loaded, total, ok, chromium version, timings) and exits
1 when an image failed to load, 2 when Chromium is missing (Debian: ``apt-get install
chromium``). Needs no network.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = (
    "--headless",
    "--no-sandbox",  # root in containers
    "--disable-gpu",
    "--no-first-run",
    "--disable-extensions",
    "--hide-scrollbars",
    "--virtual-time-budget=10000",  # let the load event and the check script run
)


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_version(binary: str) -> str:
    proc = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60)
    return proc.stdout.strip()


def _chromium(binary: str, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    # A private profile: several checks (or a user's browser) may run at once.
    with tempfile.TemporaryDirectory(prefix="lemo-chromium-") as profile:
        return subprocess.run(
            [binary, *FLAGS, f"--user-data-dir={profile}", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )


def check_images(binary: str, html_path: Path) -> dict[str, Any]:
    """Load the page; what its inline check reported: loaded, total, ok."""
    proc = _chromium(binary, "--dump-dom", html_path.resolve().as_uri())
    body = re.search(r"<body[^>]*>", proc.stdout)
    attrs = dict(re.findall(r'([\w-]+)="([^"]*)"', body.group(0))) if body else {}
    loaded = attrs.get("data-images-loaded")
    if loaded is None:
        return {
            "ok": False,
            "loaded": None,
            "total": None,
            "why": "the page's image check did not run (script blocked or page not loaded)",
            "stderr_tail": proc.stderr[-500:],
        }
    n, total = (int(x) for x in loaded.split("/"))
    return {"ok": attrs.get("data-images-ok") == "true" and n == total, "loaded": n, "total": total}


def screenshot(binary: str, html_path: Path, png: Path, width: int, height: int) -> Path:
    png = png.resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    png.unlink(missing_ok=True)
    _chromium(
        binary,
        f"--screenshot={png}",
        f"--window-size={width},{height}",
        html_path.resolve().as_uri(),
    )
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot to {png}")
    return png


def _demo_run(base: Path) -> Path:
    """A small real run (offline architect, built-in digits): about 15-90 s of CPU."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lemo_nade",
            "run",
            "--iterations=3",
            "--epochs=1",
            f"--runs-dir={base}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return next(p for p in base.iterdir() if p.is_dir())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", type=Path)
    ap.add_argument("--demo", action="store_true", help="make a small run first and use it")
    ap.add_argument(
        "--png", type=Path, help="screenshot path (default RUN_DIR/report_screenshot.png)"
    )
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=4000)
    ap.add_argument("--no-write", action="store_true", help="check the existing report")
    args = ap.parse_args(argv)
    binary = find_chromium()
    if binary is None:
        print("error: no chromium found; on Debian: apt-get install chromium", file=sys.stderr)
        return 2
    if args.demo:
        args.run_dir = _demo_run(Path(tempfile.mkdtemp(prefix="lemo-report-demo-")))
    if args.run_dir is None:
        ap.error("give RUN_DIR or --demo")
    html_path = args.run_dir / "report" / "report.html"
    t0 = time.perf_counter()
    if not args.no_write:
        from lemo_nade.reporting.write import write_report

        write_report(args.run_dir)
    t1 = time.perf_counter()
    result: dict[str, Any] = check_images(binary, html_path)
    t2 = time.perf_counter()
    png = screenshot(
        binary,
        html_path,
        args.png or args.run_dir / "report_screenshot.png",
        args.width,
        args.height,
    )
    t3 = time.perf_counter()
    result.update(
        html=str(html_path),
        html_bytes=html_path.stat().st_size,
        screenshot=str(png),
        chromium=chromium_version(binary),
        write_s=round(t1 - t0, 2),
        check_s=round(t2 - t1, 2),
        screenshot_s=round(t3 - t2, 2),
    )
    print(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
