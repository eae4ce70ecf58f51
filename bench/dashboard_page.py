"""The dashboard's run page for a run with 10,000 fan-out children (issue 16): page weight and
time to first paint, in Debian's chromium driven by Playwright against `statepipe serve`.

    python bench/dashboard_page.py                 # embedded PostgreSQL (or STATEPIPE_DATABASE_URL)
    python bench/dashboard_page.py --items 10000 --rounds 5 --live

It works in its own database (statepipe_bench_dashboard, dropped and re-created), makes one
finished run of bench/workflows/wide.py, and opens its page `--rounds` times in fresh browser
contexts (nothing cached). For each: the bytes the page loaded (HTML with its data, CSS, JS),
first paint and first contentful paint, when the step list was drawn, and, after opening the
fan-out, how long its first children took to show and how many rows the page holds. `--live`
also follows a second such run while it executes and reports how far the page fell behind the
store. A screenshot goes to bench/results/dashboard-10k.png."""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import benchdb  # bench/benchdb.py: the scripts run from this folder
import httpx

ROOT = Path(__file__).resolve().parent.parent
BENCH_DB = "statepipe_bench_dashboard"
WIDE = ROOT / "bench" / "workflows" / "wide.py"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

TIMING = """() => {
  const nav = performance.getEntriesByType('navigation')[0];
  const paint = Object.fromEntries(performance.getEntriesByType('paint').map(p => [p.name, p.startTime]));
  const res = performance.getEntriesByType('resource');
  return {
    html: nav.encodedBodySize, assets: res.reduce((t, r) => t + r.encodedBodySize, 0),
    requests: 1 + res.length, fp: paint['first-paint'], fcp: paint['first-contentful-paint'],
    dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
    resources: res.map(r => [r.name.replace(location.origin, ''), r.encodedBodySize]),
  };
}"""


def _database(url: str | None) -> str:
    return benchdb.fresh_database(url, BENCH_DB)


def _run(env: dict[str, str], items: int, detach: bool, pause: float = 0.0) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "statepipe", "run", str(WIDE), "-i", f"items={items}", "-i", f"pause={pause}",
         *(["--detach"] if detach else [])],
        env=env, capture_output=True, text=True, check=True,
    )
    if detach:
        return done.stdout.split()[-1]
    import json

    return str(json.loads(done.stdout.splitlines()[0])["run_id"])


def _open(browser: Any, url: str) -> dict[str, Any]:
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    began = time.perf_counter()
    page.goto(url)
    page.wait_for_selector('#steps .srow[data-step="child"]')
    drawn = (time.perf_counter() - began) * 1000
    m = page.evaluate(TIMING)
    m["drawn"] = drawn
    began = time.perf_counter()
    page.click('.srow[data-step="child"] .twisty')
    page.wait_for_selector(".vlist .srow.child .badge")
    m["children"] = (time.perf_counter() - began) * 1000
    m["rows"] = page.locator(".srow").count()
    m["elements"] = page.evaluate("document.getElementsByTagName('*').length")
    page.locator(".vlist").evaluate("el => { el.scrollTop = el.scrollHeight / 2 }")
    began = time.perf_counter()
    page.wait_for_selector(".vlist .srow.child .name:text-is('5000')")
    m["scroll"] = (time.perf_counter() - began) * 1000
    m["page"], m["context"] = page, context
    return m


def _live(browser: Any, base: str, env: dict[str, str], store: Any, items: int) -> None:
    run_id = _run(env, items, detach=True, pause=0.002)
    context = browser.new_context(viewport={"width": 1200, "height": 800})
    page = context.new_page()
    page.goto(f"{base}/runs/{run_id}")
    page.click('.srow[data-step="child"] .twisty')
    lags: list[int] = []
    while True:
        seen = page.evaluate("window.__statepipe.last")
        last = store.get_run(run_id).last_seq
        lags.append(max(0, last - seen))
        if page.evaluate("window.__statepipe.ended"):
            break
        time.sleep(0.5)
    seqs = page.evaluate("window.__statepipe.seqs")
    after = page.evaluate("window.__statepipe.after")
    events = [e.seq for e in store.events_after(run_id, after, 10_000_000)]
    print(f"\nlive: a run of {items:,} children followed from seq {after}: the page received {len(seqs):,} events "
          f"({'exactly the store' + chr(39) + 's' if seqs == events else 'NOT the store' + chr(39) + 's'}); "
          f"behind the store by p50 {statistics.median(lags):.0f} / max {max(lags)} events (sampled every 0.5 s)")
    context.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--live", action="store_true", help="also follow a run while it executes")
    parser.add_argument("--database-url", default=os.environ.get("STATEPIPE_DATABASE_URL"))
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    from statepipe.store.database import open_store

    url = _database(args.database_url)
    env = {**os.environ, "STATEPIPE_DATABASE_URL": url}
    print(f"making a finished run of {args.items:,} children…", file=sys.stderr)
    run_id = _run(env, args.items, detach=False)
    server, base = benchdb.serve(env)
    store = open_store(url, max_size=2)
    try:
        whole = len(httpx.get(f"{base}/api/runs/{run_id}", timeout=60).content)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            rounds = []
            for i in range(args.rounds):
                m = _open(browser, f"{base}/runs/{run_id}")
                if i == args.rounds - 1:
                    (ROOT / "bench" / "results").mkdir(exist_ok=True)
                    m["page"].screenshot(path=str(ROOT / "bench" / "results" / "dashboard-10k.png"))
                m["context"].close()
                rounds.append(m)
            first = rounds[0]
            med = {k: statistics.median(r[k] for r in rounds) for k in ("fp", "fcp", "dcl", "drawn", "children", "scroll")}
            print(f"run page of a finished run with {args.items:,} fan-out children, {args.rounds} cold loads (median ms):\n")
            print("| page weight | requests | first paint | first contentful paint | DOMContentLoaded | steps drawn | "
                  "fan-out opened | scrolled to child 5000 | rows in the page | elements |")
            print("|---|---|---|---|---|---|---|---|---|---|")
            print(f"| {(first['html'] + first['assets']) / 1024:.0f} KB (HTML+data {first['html'] / 1024:.0f} KB) | "
                  f"{first['requests']} | {med['fp']:.0f} | {med['fcp']:.0f} | {med['dcl']:.0f} | {med['drawn']:.0f} | "
                  f"{med['children']:.0f} | {med['scroll']:.0f} | {first['rows']} | {first['elements']} |")
            print(f"\nthe first load, when the server reads the run from the database (later loads reuse its snapshot"
                  f" while the run is unchanged): first paint {first['fcp']:.0f} ms, steps drawn {first['drawn']:.0f} ms")
            print(f"\nresources: {', '.join(f'{n} {b / 1024:.1f} KB' for n, b in first['resources'])}")
            print(f"for comparison, the whole run as `inspect --json` (GET /api/runs/ID): {whole / 1024 / 1024:.1f} MB")
            if args.live:
                _live(browser, base, env, store, args.items)
            browser.close()
    finally:
        store.pool.close()
        server.terminate()
        server.wait(30)


if __name__ == "__main__":
    main()
