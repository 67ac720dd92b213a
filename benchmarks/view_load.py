"""Does watching a session slow it down? The decoder's latency with and without open views.

    python3 -m benchmarks.view_load --out benchmarks/results/view [--bins 1200] [--reps 2] [--pages 3]

Runs the real `spikestream replay --speed 1` (the default simulated session, an untrained
2x256 LSTM unless `--artifact` is given, `--adapt health` so the status message carries
channel health) several times, alternating five variants in one run so all see the same
machine: no subscriber at all (every message is dropped at the socket); `spikestream
listen` as the one subscriber (the baseline: a session always has a consumer, such as the
cursor task); one `spikestream view` subscribed with no page open (the subscriber and web
server alone); the view with `--pages` pages open in a headless Chromium (Debian's, driven
by playwright) on the same machine; and the same with that Chromium at `nice -n 19`. It
reports the replay's own summary (arrival -> sent p50 / p99 / p99.9 / max, deadline misses,
publish drops), how often each page redrew (frames per second, sampled every 2 s while
40 bins/s arrive), the view process's CPU use, and the machine's load. With
`--screenshot`, the first page is saved while bins arrive in the last run with pages.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import typer

from benchmarks import procs

NO_SUB, LISTEN = "no subscriber", "listen (no view)"
VIEW_ONLY, PAGES, PAGES_NICE = "view, no page", "view + pages", "view + pages, browser at nice 19"
VARIANTS = (NO_SUB, LISTEN, VIEW_ONLY, PAGES, PAGES_NICE)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout_s: float = 120.0) -> None:
    """Wait until `url` answers (a server process has started); fail early if `proc` died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode} before serving {url}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")


def _artifact(path: Path | None, work: Path) -> Path:
    if path is not None:
        return path
    from benchmarks.artifacts import build_untrained
    from replay import default_session

    return build_untrained(work, "lstm", default_session(), backends=[]).path


def chromium_or_exit() -> str:
    """The system Chromium's path, or a one-line error and exit 2 (nothing downloads a browser)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        typer.echo("error: no chromium on PATH (Debian: apt-get install -y chromium)", err=True)
        raise typer.Exit(2)
    return chromium


def open_pages(browser, url: str, n: int, ready_js: str = "window.spikeview && window.spikeview.connected") -> list:
    """`n` pages, each in its own browser context (as separate browsers), once `ready_js` holds."""
    pages = []
    for _ in range(n):
        page = browser.new_context(viewport={"width": 1280, "height": 820}).new_page()
        page.goto(url)
        page.wait_for_function(ready_js, timeout=60_000)
        pages.append(page)
    return pages


def _receiving(url: str) -> bool:
    """True once the view has received a velocity message (its /state.json has a last_rx)."""
    with urllib.request.urlopen(url + "state.json", timeout=5) as r:
        return json.load(r)["last_rx"] is not None


def _one_run(variant: str, artifact: Path, bins: int, pages_n: int, browsers: dict, work: Path, k: int,
             screenshot: Path | None) -> dict:
    """One replay in one variant; returns its summary, the pages' fps and the view's CPU."""
    addr = f"tcp://127.0.0.1:{procs.free_port()}"
    view = url = listener = None
    pages: list = []
    if variant == LISTEN:  # the baseline: a plain subscriber, as any consumer of the velocities is
        listener = procs.start(procs.cli("listen", "--zmq", addr), work / f"listen-{k}.log")
    elif variant != NO_SUB:
        port = procs.free_port()
        url = f"http://127.0.0.1:{port}/"
        view = procs.start(procs.cli("view", "--zmq", addr, "--port", str(port)), work / f"view-{k}.log")
        wait_http(url, view)
        if variant in browsers:
            pages = open_pages(browsers[variant], url, pages_n)
    summary_file = work / f"summary-{k}.json"
    replay = procs.start(procs.cli("replay", str(artifact), "--speed", "1", "--max-bins", str(bins), "--zmq", addr,
                                   "--adapt", "health", "--summary-json", str(summary_file)), work / f"replay-{k}.log")
    fps: list[int] = []
    frame_ms: list[float] = []
    cpu0 = t0 = None
    while replay.poll() is None:
        time.sleep(2.0)
        if view is None or replay.poll() is not None:
            continue
        if cpu0 is None:  # measure from the first bins on, not over the replay's start-up
            if _receiving(url):
                cpu0, t0 = cpu_s(view.pid), time.monotonic()
            continue
        fps += [p.evaluate("window.spikeview.fps") for p in pages]
        frame_ms += [p.evaluate("window.spikeview.frameMs") for p in pages]
        if screenshot is not None and pages and time.monotonic() - t0 > 11:  # live, with a full 10 s strip
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            pages[0].screenshot(path=str(screenshot))
            screenshot = None
    out: dict = {"variant": variant, "loadavg_after": list(os.getloadavg())}
    if listener is not None:
        procs.stop(listener)
    if replay.returncode != 0:
        raise RuntimeError(f"replay failed:\n{procs.tail(work / f'replay-{k}.log')}")
    out["summary"] = json.loads(summary_file.read_text())
    if view is not None:
        out["view_cpu_pct"] = 100 * (cpu_s(view.pid) - cpu0) / (time.monotonic() - t0) if cpu0 is not None else None
        out["fps"] = {"min": min(fps), "median": statistics.median(fps), "samples": len(fps),
                      "js_ms_per_frame_median": statistics.median(frame_ms)} if fps else None
        out["page_last_seq"] = [int(p.evaluate("document.getElementById('seq').dataset.value")) for p in pages]
        for p in pages:
            p.context.close()
        procs.stop(view)
    return out


def _table(runs: list[dict]) -> str:
    lines = ["| run | variant | bins | latency p50 µs | p99 µs | p99.9 µs | max µs | misses | drops | page fps min / median | page JS ms/frame | view CPU % | load (1 min) after |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for k, r in enumerate(runs):
        s, lat = r["summary"], r["summary"]["latency_us"]
        fps = r.get("fps")
        lines.append(f"| {k + 1} | {r['variant']} | {s['n_bins']} | {lat['p50']:.0f} | {lat['p99']:.0f} | "
                     f"{lat['p99.9']:.0f} | {lat['max']:.0f} | {s['deadline_misses']} | {s['publish_drops']} | "
                     + (f"{fps['min']} / {fps['median']:g} | {fps['js_ms_per_frame_median']:.2f}" if fps else "– | –") + " | "
                     + (f"{r['view_cpu_pct']:.1f}" if r.get("view_cpu_pct") is not None else "–")
                     + f" | {r['loadavg_after'][0]:.2f} |")
    return "\n".join(lines)


def main(
    out: Path = typer.Option(Path("benchmarks/results/view"), "--out", help="Folder for view_load.json and view_load.md."),
    artifact: Path = typer.Option(None, "--artifact", help="Artifact to replay (default: an untrained 2x256 LSTM on the default session)."),
    bins: int = typer.Option(1200, "--bins", help="Bins per replay (40 per second)."),
    reps: int = typer.Option(2, "--reps", help="Runs of each variant, alternated."),
    pages: int = typer.Option(3, "--pages", help="Open pages in the variants with pages."),
    screenshot: Path = typer.Option(None, "--screenshot", help="Save the first page here, live, during the last run with pages."),
) -> None:
    """Decoder latency with no view, a view alone, and `--pages` open pages, side by side in one run."""
    from playwright.sync_api import sync_playwright

    from benchmarks.machine import machine_info

    chromium = chromium_or_exit()
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        work = Path(tmp)
        art = _artifact(artifact, work)
        niced = work / "chromium-nice"  # the same Chromium, started at the lowest CPU priority
        niced.write_text(f'#!/bin/sh\nexec nice -n 19 {chromium} "$@"\n')
        niced.chmod(0o755)
        browsers = {PAGES: pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"]),
                    PAGES_NICE: pw.chromium.launch(executable_path=str(niced), args=["--no-sandbox"])}
        order = [v for _ in range(reps) for v in VARIANTS]
        for k, variant in enumerate(order):
            last_pages = variant == PAGES and k == len(order) - len(VARIANTS) + VARIANTS.index(PAGES)
            runs.append(_one_run(variant, art, bins, pages, browsers, work, k, screenshot if last_pages else None))
            typer.echo(_table(runs[-1:]).splitlines()[-1])
        for b in browsers.values():
            b.close()
    result = {"machine": machine_info(), "bins": bins, "pages": pages, "runs": runs}
    (out / "view_load.json").write_text(json.dumps(result, indent=2, default=float))
    md = (f"# Decoder latency with and without open views\n\n`python3 -m benchmarks.view_load --bins {bins} "
          f"--reps {reps} --pages {pages}`: `replay --speed 1 --adapt health` of the default session, "
          f"alternating: {' / '.join(VARIANTS)} ({pages} headless Chromium pages on the same machine).\n"
          f"Machine: {result['machine']['cpu']}, {result['machine']['usable_cores']} usable cores, "
          f"load at the end {os.getloadavg()[0]:.2f}.\n\n{_table(runs)}\n")
    (out / "view_load.md").write_text(md)
    typer.echo(md)


if __name__ == "__main__":
    typer.run(main)
