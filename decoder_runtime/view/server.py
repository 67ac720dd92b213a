"""The view's process: one ZeroMQ SUB socket in, one aiohttp web server out.

Three coroutines on one asyncio loop:
- `_receive`: reads every message from the SUB socket (connected to each `--zmq` address,
  subscribed to `velocity`, `status` and `task`) into the `ViewState`, and wakes the
  broadcaster. The socket has its own receive high-water mark: if this process ever fell
  behind, ZeroMQ would drop messages for it (the page shows them as missing bins); the
  runtime's PUB never waits for it.
- `_broadcast`: after each wake-up, or every `heartbeat_s` when the stream is quiet, turns
  what arrived into one JSON update and offers it to every open page. The heartbeat is what
  keeps "no data for N s" counting while nothing arrives.
- one sender per page (`_Page.pump`): a bounded queue per page, so a slow or stalled
  browser cannot hold up the others; a page whose queue is full is resynchronised with a
  fresh snapshot instead.
HTTP: `GET /` the page, `GET /static/...` its script, style and the vendored uPlot,
`GET /ws` the WebSocket, `GET /state.json` the current snapshot (for scripts and curl).
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from pathlib import Path

import zmq
import zmq.asyncio
from aiohttp import WSMsgType, web

from decoder_runtime.view.state import TOPICS, ViewState

STATIC = Path(__file__).resolve().parent / "static"


def _dumps(obj: dict) -> str:
    return json.dumps(obj, separators=(",", ":"))


class _Page:
    """One open page: its WebSocket and a bounded queue of JSON texts to send it."""

    def __init__(self, ws: web.WebSocketResponse, queue_size: int) -> None:
        self.ws = ws
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)

    def offer(self, text: str, state: ViewState) -> None:
        if self.queue.full():  # this browser is not keeping up: start it over from now
            while not self.queue.empty():
                self.queue.get_nowait()
            text = _dumps(state.snapshot(time.time()))
        self.queue.put_nowait(text)

    async def pump(self) -> None:
        try:
            while True:
                await self.ws.send_str(await self.queue.get())
        except (ConnectionError, RuntimeError):  # the page went away mid-send; _ws cleans up
            pass


class ViewServer:
    """The subscriber, the shared state and the web app of one `spikestream view` process."""

    def __init__(self, endpoints: Sequence[str], *, rcvhwm: int = 10_000, heartbeat_s: float = 0.25,
                 queue_size: int = 256, state: ViewState | None = None) -> None:
        self.endpoints = list(endpoints)
        self.state = state or ViewState()
        self.heartbeat_s = heartbeat_s
        self.queue_size = queue_size
        self.rcvhwm = rcvhwm
        self.pages: set[_Page] = set()
        self._wake = asyncio.Event()
        self.app = web.Application()
        self.app.add_routes([web.get("/", self._index), web.get("/ws", self._ws), web.get("/state.json", self._json),
                             web.static("/static", STATIC)])
        self.app.on_startup.append(self._start)
        self.app.on_shutdown.append(self._close_pages)
        self.app.on_cleanup.append(self._stop)

    def _socket(self) -> zmq.asyncio.Socket:
        sock = zmq.asyncio.Context.instance().socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self.rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        for addr in self.endpoints:
            sock.connect(addr)
        for topic in TOPICS:
            sock.setsockopt(zmq.SUBSCRIBE, topic)
        return sock

    async def _start(self, app: web.Application) -> None:
        self._sock = self._socket()
        self._tasks = [asyncio.create_task(self._receive()), asyncio.create_task(self._broadcast())]

    async def _close_pages(self, app: web.Application) -> None:
        for page in list(self.pages):
            await page.ws.close()

    async def _stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._sock.close()

    async def _receive(self) -> None:
        sock, state = self._sock, self.state
        while True:
            frames = await sock.recv_multipart()
            if len(frames) == 2:
                state.ingest(frames[0], frames[1], time.time())
            else:
                state.bad += 1
            self._wake.set()

    async def _broadcast(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.heartbeat_s)
            except TimeoutError:
                pass
            self._wake.clear()
            update = self.state.take_update(time.time())  # taken even with no page open, so it cannot pile up
            if self.pages:
                text = _dumps({**update, "endpoints": self.endpoints, "pages": len(self.pages)})
                for page in self.pages:
                    page.offer(text, self.state)

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _json(self, request: web.Request) -> web.Response:
        return web.Response(text=_dumps(self.state.snapshot(time.time())), content_type="application/json")

    async def _ws(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(heartbeat=10.0)
        await ws.prepare(request)
        page = _Page(ws, self.queue_size)
        page.offer(_dumps({**self.state.snapshot(time.time()), "endpoints": self.endpoints}), self.state)
        self.pages.add(page)
        pump = asyncio.create_task(page.pump())
        try:
            async for msg in ws:  # the page sends nothing; this waits for it to close
                if msg.type == WSMsgType.ERROR:
                    break
        finally:
            self.pages.discard(page)
            pump.cancel()
        return ws


def run_view(endpoints: Sequence[str], host: str, port: int, print_fn=print) -> None:
    """Serve the view until interrupted (Ctrl-C / SIGTERM end it cleanly)."""
    server = ViewServer(endpoints)
    web.run_app(server.app, host=host, port=port, print=print_fn, handle_signals=True)
