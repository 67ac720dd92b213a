"""`spikestream view`: a live web page of a running session, fed by its ZeroMQ messages.

The view is a separate process and only a subscriber: one ZeroMQ SUB socket (its own
receive high-water mark) on the runtime's `velocity` and `status` topics and the closed-loop
task's `task` topic. The runtime's PUB never waits for a subscriber, so a view, however
slow or however many pages it serves, cannot slow the decoder down.

Modules: `state` (what the page shows, built from messages: restarts, silences, missing
bins, flag counts), `server` (the SUB socket, the web server and one WebSocket per open
page), `static/` (the page, its script, and uPlot vendored from its npm package, MIT
licence beside it in `uPlot.LICENSE`). Everything is served locally: no CDN, no download.

Why aiohttp + uPlot, and not the alternatives. Measured with `python3 -m
benchmarks.view_alternatives` (benchmarks/results/view/view_alternatives.md): the same two
strips fed by the same 40 bins/s, 3 headless Chromium pages, 2-core machine (load ~23 from
other work): this view redrew 28-30 times/s per page (median; min 17-21) with its server at
3% of a core; a Bokeh server page 16-18.5 times/s (min 5-8) with its server at 9%; the
three Chromium pages took ~80% of a core either way.
- Bokeh server (BokehJS bundled in the Python package) keeps one Python document per open
  page and pushes every change as a patch from a per-page periodic callback, so its server
  work grows with frame rate x pages, on the machine that runs the decoder. Here the server
  forwards each message once per page (a few hundred bytes, 40/s) and the browser scrolls
  and redraws on its own animation frames (capped at 30 fps), so the frame rate is the
  browser's, not the server's.
- Plotly Dash / Panel build on the same server-side-document model (Panel on Bokeh itself);
  matplotlib over WebSockets draws on the server.
- uPlot (MIT, 50 kB, no dependencies) is made for exactly this: streaming time series on a
  canvas, a redraw of a few thousand points in well under a millisecond.
- aiohttp gives the HTTP server, static files and WebSockets in one well-kept asyncio
  package, on the same loop as pyzmq's asyncio socket; starlette + uvicorn would be two
  packages (plus a WebSocket library) for the same.
"""
from decoder_runtime.view.server import ViewServer, run_view
from decoder_runtime.view.state import ViewState

__all__ = ["ViewServer", "ViewState", "run_view"]
