"""`spikestream view` in a real headless Chromium (Debian's package), fed by a real replay.

The page is read the way a person reads it: its text and the values behind that text. A
real ZeroMQ subscriber in this process receives the same messages, and the page must show
exactly its last seq and velocity; the page must say "no data for N s" when the publisher
stops and mark a restart when a new run starts from seq 0. A closed-loop task message
(the format the task publishes on its own topic) is drawn in the task panel. A screenshot
is saved under pytest's tmp path.

Chromium is driven by playwright with `executable_path`, so nothing downloads a browser;
without a chromium on PATH (.ci/run installs it) the browser tests skip with that reason.
"""
from __future__ import annotations

import shutil
import subprocess
import threading
import time

import msgpack
import pytest
import zmq

from benchmarks.view_load import wait_http
from decoder_runtime.messages import unpack
from decoder_runtime.publish import connect_subscriber
import runtime_helpers as h

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install -y chromium)")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    base = tmp_path_factory.getbasetemp() / "runtime"
    base.mkdir(exist_ok=True)
    return h.session_file(base), h.artifact(base)


@pytest.fixture
def view(tmp_path):
    """A `spikestream view` process on the runtime's and the task's endpoints."""
    runtime, task, port = (f"tcp://127.0.0.1:{h.free_port()}", f"tcp://127.0.0.1:{h.free_port()}", h.free_port())
    proc = h.cli("view", "--zmq", runtime, "--zmq", task, "--port", str(port), stderr=subprocess.PIPE)
    try:
        wait_http(f"http://127.0.0.1:{port}/", proc, timeout_s=60)
        yield runtime, task, f"http://127.0.0.1:{port}/"
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def publish_task(addr: str, n: int = 40) -> None:
    """Task messages as the closed-loop task publishes them (mm), 40 per second."""
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.bind(addr)
    time.sleep(0.3)  # let the view's SUB connect
    for k in range(n):
        body = msgpack.packb({"v": 1, "t": time.time(), "seq": k, "cursor": [k * 1.0, -k * 0.5],
                              "target": [60.0, -30.0], "target_radius": 12.0, "workspace": [-100.0, 100.0, -80.0, 80.0],
                              "trial": 6, "state": "move", "outcome": "success", "n_trials": 5, "n_success": 3,
                              "success_rate": 0.6})
        pub.send_multipart([b"task", body])
        time.sleep(0.025)
    pub.close(linger=500)


def drain(sub: zmq.Socket, until: subprocess.Popen) -> list[dict]:
    got = []
    while until.poll() is None or sub.poll(300):
        if sub.poll(100):
            got.append(unpack(sub.recv_multipart()[1]))
    return got


def page_value(page, el: str) -> str:
    return page.eval_on_selector(el, "e => e.dataset.value")


@needs_chromium
def test_pages_follow_a_replay_show_the_gap_and_the_restart(files, view, browser, tmp_path):
    nwb, artifact = files
    runtime, task_addr, url = view
    pages = [browser.new_context(viewport={"width": 1280, "height": 820}).new_page() for _ in range(2)]
    errors: list[str] = []
    for page in pages:
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_function("window.spikeview && window.spikeview.connected")
    assert "waiting for data" in pages[0].text_content("#banner")

    publish_task(task_addr)
    for page in pages:
        page.wait_for_function("document.getElementById('task-text').textContent.includes('success 3/5 (60%)')")
    assert "trial 6 · move · last outcome success" in pages[0].text_content("#task-text")

    sub = connect_subscriber(runtime)
    replay = h.cli("replay", str(nwb), str(artifact), "--speed", "1", "--max-bins", "200", "--zmq", runtime,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got: list[dict] = []
    reader = threading.Thread(target=lambda: got.extend(drain(sub, replay)))
    reader.start()
    try:
        pages[0].wait_for_function("Number(document.getElementById('seq').dataset.value) >= 20", timeout=60_000)
        first = int(page_value(pages[0], "#seq"))
        frames = pages[0].evaluate("window.spikeview.frames")
        pages[0].wait_for_timeout(1000)
        assert int(page_value(pages[0], "#seq")) > first  # the numbers move
        assert pages[0].evaluate("window.spikeview.frames") > frames  # and the page redraws
        assert pages[0].text_content("#banner").startswith("live")
        assert replay.wait(60) == 0
    finally:
        reader.join(30)
        sub.close()
    last = got[-1]
    assert last["seq"] == 199
    for page in pages:  # every open page shows what the subscriber received last, exactly
        page.wait_for_function("document.getElementById('banner').textContent.startsWith('no data for')")
        assert int(page_value(page, "#seq")) == last["seq"]
        assert [float(page_value(page, s)) for s in ("#vx", "#vy")] == last["vel"]
        assert page.text_content("#vx") == f"{last['vel'][0]:.4f}"
        assert page.text_content("#model") == last["model"]
    pages[0].wait_for_function("parseFloat(document.getElementById('banner').textContent.slice(12)) >= 1.0")
    assert pages[0].get_attribute("#artifact", "title") == h.loaded(artifact).config["files"]["weights.safetensors"]
    assert pages[0].text_content("#adapt") == "none"

    again = h.cli("replay", str(nwb), str(artifact), "--speed", "1", "--max-bins", "80", "--zmq", runtime,
                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert again.wait(60) == 0
    for page in pages:
        page.wait_for_function("document.getElementById('restarts').textContent === '1'")
        assert "restart (seq 199 -> " in page.text_content("#markers")
    pages[0].wait_for_timeout(1500)  # let the new silence show too
    pages[0].screenshot(path=str(tmp_path / "view.png"))
    assert (tmp_path / "view.png").stat().st_size > 10_000
    assert errors == []


@pytest.mark.parametrize("args, why", [(["--host", "0.0.0.0"], "not a loopback address"),
                                       (["--zmq", "127.0.0.1:5555"], "not a ZeroMQ endpoint"),
                                       (["--port", "0"], "--port must be in 1..65535")])
def test_view_refuses_bad_options_in_one_line(args, why):
    import typer
    from typer.testing import CliRunner

    from spikestream.commands.view import view as view_command

    app = typer.Typer()
    app.command()(view_command)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert why in result.output and "Traceback" not in result.output
