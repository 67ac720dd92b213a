"""`spikestream view`: a live web page of a running session, fed by its ZeroMQ messages.

The view is a separate process and only a subscriber: one ZeroMQ SUB socket (its own
receive high-water mark) on the runtime's `velocity` and `status` topics and the closed-loop
task's `task` topic. The runtime's PUB never waits for a subscriber, so a view, however
slow or however many pages it serves, cannot slow the decoder down.

Modules: `state` (what the page shows, built from messages: restarts, silences, missing
bins, flag counts), `server` (the SUB socket, the web server and one WebSocket per open
page), `static/` (the page, its script, and uPlot vendored from its npm package, MIT
licence beside it in `uPlot.LICENSE`). Everything is served locally: no CDN, no download.

Why aiohttp + uPlot, and not the alternatives (measured on the 2-core machine, headless
Chromium, 40 bins/s arriving; see the note of issue 15 for the numbers):
- Bokeh server (BokehJS bundled in the Python package) would keep one Python document per
  open page and push every change as a JSON patch from a per-page periodic callback, so
  the server's Python work grows with frame rate x pages on a machine that also runs the
  decoder; its page is also several MB of BokehJS. Here the server forwards each message
  once per page (a few hundred bytes, 40/s) and the browser scrolls and redraws on every
  animation frame, so the frame rate is the browser's, not the server's.
- Plotly Dash / Panel build on the same server-side-document model (and Dash on Flask
  callbacks); matplotlib over WebSockets draws on the server.
- uPlot (MIT, 50 kB, no dependencies) is built for exactly this: streaming time series on
  a canvas, redrawing thousands of points in well under a millisecond.
- aiohttp gives the HTTP server, static files and WebSockets in one well-kept asyncio
  package, on the same loop as pyzmq's asyncio socket; starlette + uvicorn would be two
  packages for the same.
"""
from decoder_runtime.view.server import ViewServer, run_view
from decoder_runtime.view.state import ViewState

__all__ = ["ViewServer", "ViewState", "run_view"]
