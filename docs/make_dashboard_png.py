"""Remakes docs/dashboard.png, the README's picture of `statepipe serve`: the run page of the
building workflow mid-run (the fan-out of `spaces` half done, one department's rooms streaming),
taken by Debian's chromium through Playwright from a real server and worker.

    .venv/bin/python docs/make_dashboard_png.py [--database-url URL]

Without a URL it starts a throwaway embedded PostgreSQL in a temporary folder, so your own
runs are neither shown nor touched."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
sys.path.insert(0, str(REPO / "bench"))
import benchdb  # noqa: E402 - bench/benchdb.py: starting `statepipe serve`

STEP_SECONDS = 4.0  # slow enough that the picture catches children mid-stream


def shoot(url: str) -> None:
    from playwright.sync_api import sync_playwright

    env = {**os.environ, "STATEPIPE_DATABASE_URL": url, "STATEPIPE_OUTPUT_DIR": tempfile.mkdtemp(prefix="statepipe-png-")}
    server, base = benchdb.serve(env, cwd=REPO)
    try:
        made = subprocess.run([sys.executable, "-m", "statepipe", "run", "building", "-i", f"step_seconds={STEP_SECONDS}", "--detach"],
                              cwd=REPO, env=env, capture_output=True, text=True, check=True)
        run_id = made.stdout.split()[-1]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(f"{base}/runs/{run_id}")
            # the fan-out open, its children streaming their rooms
            page.wait_for_function("document.querySelectorAll('.vlist .srow.child .badge.st-running').length >= 3", timeout=120_000)
            page.locator(".vlist .srow.child").filter(has=page.locator(".badge.st-running")).nth(1).click()
            page.wait_for_function("(document.querySelector('#detail pre.stream')?.textContent || '').split('\\n').length > 6",
                                   timeout=60_000)
            page.screenshot(path=str(DOCS / "dashboard.png"))
            browser.close()
        print(f"docs/dashboard.png: {(DOCS / 'dashboard.png').stat().st_size / 1024:.0f} KB", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "statepipe", "cancel", run_id], check=False, cwd=REPO, env=env, capture_output=True)
    finally:
        server.terminate()
        server.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="PostgreSQL to make the run in (default: a throwaway embedded one)")
    args = parser.parse_args()
    if args.database_url:
        shoot(args.database_url)
        return
    home = tempfile.mkdtemp(prefix="statepipe-png-")
    os.environ["STATEPIPE_HOME"] = home
    from statepipe.store import embedded

    try:
        shoot(embedded.ensure_running().url)
    finally:
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
