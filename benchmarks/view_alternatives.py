"""Why the view is aiohttp + uPlot: the same live page drawn by it and by a Bokeh server.

    pip install bokeh   # only for this comparison; the view itself does not use it
    python3 -m benchmarks.view_alternatives --out benchmarks/results/view [--pages 3] [--seconds 20] [--reps 2]

One synthetic runtime publishes real velocity messages (decoder_runtime.messages) at 40 bins/s
on loopback. Each variant subscribes to it and serves `--pages` headless Chromium pages
(Debian's), alternated in one run so both see the same machine:
- `view`: `spikestream view` itself (aiohttp, one JSON message per bin per page, uPlot redraws
  on animation frames, capped at 30 fps);
- `bokeh`: a Bokeh server app with the same two strips (velocity vx/vy, latency with markers),
  one document per page, a 33 ms periodic callback per page streaming new bins into its
  ColumnDataSources (rollover 400), the usual Bokeh streaming pattern.
Measured: redraws per second per page (view: its own counter; Bokeh: ColumnsStreamed events,
each of which re-renders the plot), the server process's CPU %, and all Chromium processes'
CPU % (every page on one 2-core machine beside the decoder is the worst case).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import typer

from benchmarks import procs
from benchmarks.view_load import chromium_or_exit, cpu_s, open_pages, wait_http

_BOKEH_APP = r'''
import sys, threading
import zmq
from bokeh.application import Application
from bokeh.application.handlers.function import FunctionHandler
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, DataRange1d
from bokeh.plotting import figure
from bokeh.server.server import Server
from decoder_runtime.messages import unpack

BINS = []

def feed(addr):
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.connect(addr)
    sub.setsockopt(zmq.SUBSCRIBE, b"velocity")
    while True:
        m = unpack(sub.recv_multipart()[1])
        BINS.append((m["t_arr"] / 1e6, m["vel"][0], m["vel"][1], m["lat_us"]))

def app(doc):
    vel = ColumnDataSource(dict(t=[], vx=[], vy=[]))
    lat = ColumnDataSource(dict(t=[], lat=[]))
    x = DataRange1d(follow="end", follow_interval=10_000, range_padding=0)
    f1 = figure(height=210, width=800, x_range=x, title="decoded velocity")
    f1.line("t", "vx", source=vel)
    f1.line("t", "vy", source=vel, color="red")
    f2 = figure(height=210, width=800, x_range=x, title="latency")
    f2.line("t", "lat", source=lat)
    f2.scatter("t", "lat", source=lat, size=4)
    doc.add_root(column(f1, f2))
    seen = [len(BINS)]
    def push():
        i, n = seen[0], len(BINS)
        if n > i:
            new, seen[0] = BINS[i:n], n
            vel.stream(dict(t=[b[0] for b in new], vx=[b[1] for b in new], vy=[b[2] for b in new]), rollover=400)
            lat.stream(dict(t=[b[0] for b in new], lat=[b[3] for b in new]), rollover=400)
    doc.add_periodic_callback(push, 33)

port = int(sys.argv[2])
threading.Thread(target=feed, args=(sys.argv[1],), daemon=True).start()
server = Server({"/": Application(FunctionHandler(app))}, port=port, allow_websocket_origin=[f"127.0.0.1:{port}"])
server.start()
server.io_loop.start()
'''

# redraws in the last second: the view counts its own; a Bokeh page re-renders per streamed event
_RATE = {
    "view": "window.spikeview.fps",
    "bokeh": """(() => { if (!window.__t) { window.__t = [];
        Bokeh.documents[0].on_change((ev) => { if (ev.kind === 'ColumnsStreamed') window.__t.push(performance.now()); }); }
        const now = performance.now(); window.__t = window.__t.filter((t) => t > now - 1000); return window.__t.length / 2; })()""",
}
_READY = {"view": "window.spikeview && window.spikeview.connected",
          "bokeh": "window.Bokeh && Bokeh.documents.length > 0"}


def _publish(addr: str, stop: threading.Event) -> None:
    """40 real velocity messages per second until stopped."""
    from decoder_runtime.messages import MessagePacker
    from decoder_runtime.publish import Publisher

    pub, pack = Publisher(addr), MessagePacker("synthetic").pack
    t0, k = time.monotonic(), 0
    while not stop.is_set():
        pub.send(pack(k, k * 0.025, math.sin(k / 20), math.cos(k / 13), 150 + 40 * math.sin(k / 7), 0,
                      time.monotonic_ns(), (1, 1, 100)))
        k += 1
        time.sleep(max(0.0, t0 + k * 0.025 - time.monotonic()))
    pub.close()


def _chromiumcpu_s() -> float:
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/comm").read_text().startswith("chrom"):
                total += cpu_s(int(pid))
        except (OSError, ValueError):
            pass
    return total


def _server(variant: str, addr: str, port: int, log: Path) -> subprocess.Popen:
    argv = (procs.cli("view", "--zmq", addr, "--port", str(port)) if variant == "view"
            else [sys.executable, "-c", _BOKEH_APP, addr, str(port)])
    return procs.start(argv, log)


def _measure(variant: str, browser, addr: str, pages_n: int, seconds: float, log: Path) -> dict:
    port = procs.free_port()
    server = _server(variant, addr, port, log)
    try:
        wait_http(f"http://127.0.0.1:{port}/", server)
        pages = open_pages(browser, f"http://127.0.0.1:{port}/", pages_n, _READY[variant])
        for page in pages:
            page.evaluate(_RATE[variant])  # starts the Bokeh page's counter
        time.sleep(3)
        s0, c0, t0 = cpu_s(server.pid), _chromiumcpu_s(), time.monotonic()
        rates = []
        while time.monotonic() - t0 < seconds:
            time.sleep(2)
            rates += [p.evaluate(_RATE[variant]) for p in pages]
        dt = time.monotonic() - t0
        out = {"variant": variant, "redraws_per_s_min": min(rates), "redraws_per_s_median": statistics.median(rates),
               "server_cpu_pct": 100 * (cpu_s(server.pid) - s0) / dt,
               "chromium_cpu_pct": 100 * (_chromiumcpu_s() - c0) / dt, "load1": os.getloadavg()[0]}
        for p in pages:
            p.context.close()
        return out
    finally:
        procs.stop(server)


def main(
    out: Path = typer.Option(Path("benchmarks/results/view"), "--out", help="Folder for view_alternatives.json / .md."),
    pages: int = typer.Option(3, "--pages", help="Open pages per variant."),
    seconds: float = typer.Option(20.0, "--seconds", help="Measuring time per variant and repetition."),
    reps: int = typer.Option(2, "--reps", help="Alternated repetitions of both variants."),
) -> None:
    """spikestream view vs a Bokeh server page, same feed, same pages, side by side."""
    from playwright.sync_api import sync_playwright

    chromium = chromium_or_exit()
    out.mkdir(parents=True, exist_ok=True)
    addr, stop = f"tcp://127.0.0.1:{procs.free_port()}", threading.Event()
    feeder = threading.Thread(target=_publish, args=(addr, stop), daemon=True)
    feeder.start()
    rows = []
    try:
        with sync_playwright() as pw, tempfile.TemporaryDirectory() as logs:
            browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
            for k in range(reps):
                for variant in ("view", "bokeh"):
                    rows.append(_measure(variant, browser, addr, pages, seconds, Path(logs) / f"{variant}-{k}.log"))
                    typer.echo(json.dumps(rows[-1]))
            browser.close()
    finally:
        stop.set()
        feeder.join(5)
    (out / "view_alternatives.json").write_text(json.dumps(rows, indent=2))
    lines = [f"# spikestream view vs a Bokeh server page ({pages} pages, 40 bins/s)\n",
             "| variant | redraws/s per page, min / median | server CPU % | all Chromium CPU % | load (1 min) |",
             "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['variant']} | {r['redraws_per_s_min']:g} / {r['redraws_per_s_median']:g} | {r['server_cpu_pct']:.1f} | "
              f"{r['chromium_cpu_pct']:.0f} | {r['load1']:.1f} |" for r in rows]
    (out / "view_alternatives.md").write_text("\n".join(lines) + "\n")
    typer.echo("\n".join(lines))


if __name__ == "__main__":
    typer.run(main)
