"""The LSL source under a misbehaving rig, with real outlets and inlets on this host: pylsl names
that exist, an outlet without a source_id that drops and returns, an acquisition program that
restarts under a new source_id, two outlets with one name, and channel labels matched by name."""
from __future__ import annotations

import ast
import threading
import time

import numpy as np
import pylsl
import pytest
import torch

import runtime_helpers as h
from decoder_runtime.messages import Flag
from decoder_runtime.sources import SourceError
from decoder_runtime.sources.lsl import CountsOutlet, LSLSource

torch.set_num_threads(1)
PERIOD = 0.025


def test_every_pylsl_name_the_code_uses_exists_in_the_installed_pylsl():
    """Fault: `except pylsl.LostError` raised AttributeError (pylsl 1.18 has it in pylsl.util)
    the first time a stream was lost. Every `pylsl.X` attribute and `from pylsl... import X`
    in the project's code must resolve."""
    import importlib

    missing = []
    for f in h.REPO.glob("[!.]*/**/*.py"):
        if "tests" in f.parts:
            continue
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "pylsl":
                if not hasattr(pylsl, node.attr):
                    missing.append(f"{f.relative_to(h.REPO)}: pylsl.{node.attr}")
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pylsl"):
                mod = importlib.import_module(node.module)
                missing += [f"{f.relative_to(h.REPO)}: {node.module}.{a.name}" for a in node.names
                            if not hasattr(mod, a.name)]
    assert not missing, missing


def _pull(source: LSLSource, n: int, timeout_s: float = 15.0) -> list[tuple[np.ndarray, float, int]]:
    got = []
    until = time.monotonic() + timeout_s
    while len(got) < n and time.monotonic() < until:
        r = source.pull(0.1)
        if r is not None:
            got.append((r[0].copy(), r[1], r[3]))
    return got


def _push(outlet: CountsOutlet, values, spacing_s: float = 0.005) -> None:
    """Bins stamped on a regular 25 ms schedule (as an acquisition system stamps them), sent
    `spacing_s` apart: however this busy machine schedules the pushes, the stamps have no gap."""
    assert outlet.wait_for_consumers(15)
    t0 = pylsl.local_clock()
    for k, v in enumerate(values):
        outlet.push(np.full(outlet.n_channels, v, np.float32), t0 + k * PERIOD)
        time.sleep(spacing_s)


class _Streaming:
    """An outlet pushing bins 25 ms apart from `first` on, on its own thread, until stopped:
    a restarted acquisition program, which does not wait for anyone to reconnect."""

    def __init__(self, outlet: CountsOutlet, first: int) -> None:
        self.outlet, self.stop = outlet, threading.Event()
        self.thread = threading.Thread(target=self._run, args=(first,))
        self.thread.start()

    def _run(self, v: int) -> None:
        until = time.monotonic() + 60
        t0 = pylsl.local_clock()
        k = 0
        while not self.stop.is_set() and time.monotonic() < until:
            self.outlet.push(np.full(self.outlet.n_channels, v + k, np.float32), t0 + k * PERIOD)
            k += 1
            time.sleep(PERIOD)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.outlet.close()


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return h.loaded(h.artifact(h.runtime_base(tmp_path_factory)))


def test_an_outlet_without_source_id_that_drops_and_returns_is_decoded_on_with_a_gap(art):
    n_ch, name = art.n_channels, h.unique("nosid")
    first = CountsOutlet(name, n_ch, PERIOD, source_id="")
    source = LSLSource(n_channels=n_ch, period=PERIOD, name=name, resolve_timeout_s=10, reresolve_s=1.0)
    result: list = []
    runner = threading.Thread(target=lambda: result.append(h.run(art, source, deadline_ms=0, max_bins=40)))
    runner.start()
    try:
        _push(first, range(20))
        time.sleep(0.3)
        first.close()
        del first  # the acquisition program dies
        time.sleep(1.0)
        second = _Streaming(CountsOutlet(name, n_ch, PERIOD, source_id=""), 20)
        runner.join(60)
        second.close()
    finally:
        source.close()
    assert not runner.is_alive() and result, "the engine did not survive the loss"
    r = result[0]
    assert r.n_bins == 40
    gaps = np.flatnonzero(r.flags & Flag.GAP)  # the first bin from the returned outlet
    assert gaps.size == 1 and 0 < gaps[0] < 40 and r.flags[gaps[0]] & Flag.RESET
    assert not (np.delete(r.flags, gaps[0]) & ~int(Flag.LATE)).any()
    assert any("reconnected to source_id ''" in e for e in r.events)


def test_a_restarted_outlet_with_a_new_source_id_is_found_again_by_name():
    """Fault: liblsl's own recovery waits for the old source_id forever; the source said
    "silent" and never decoded again."""
    name = h.unique("restart")
    first = CountsOutlet(name, 3, PERIOD, source_id=f"{name}-run1")
    source = LSLSource(n_channels=3, period=PERIOD, name=name, resolve_timeout_s=10, reresolve_s=1.0)
    source.start()
    try:
        pusher = threading.Thread(target=_push, args=(first, range(10)))
        pusher.start()
        before = _pull(source, 10)
        pusher.join()
        first.close()
        del first
        second = _Streaming(CountsOutlet(name, 3, PERIOD, source_id=f"{name}-run2"), 10)
        after = _pull(source, 5, timeout_s=60)
        second.close()
    finally:
        source.close()
    assert [int(x[0][0]) for x in before] == list(range(10))
    assert after, "never decoded again after the outlet restarted"
    assert after[0][2] == Flag.GAP and all(x[2] == 0 for x in after[1:])
    assert source.describe()["source_id"] == f"{name}-run2"
    assert any(f"reconnected to source_id '{name}-run2'" in e for e in source.events)


def test_two_outlets_with_one_name_say_which_was_picked_and_that_it_is_ambiguous():
    name = h.unique("twin")
    older = CountsOutlet(name, 3, PERIOD, source_id=f"{name}-a")
    time.sleep(0.05)
    newer = CountsOutlet(name, 3, PERIOD, source_id=f"{name}-b")
    try:
        source = LSLSource(n_channels=3, period=PERIOD, name=name, resolve_timeout_s=10, ambiguity_wait_s=1.0)
        events = list(source.events)
        assert source.describe()["source_id"] == f"{name}-b"  # the newest
        assert len(events) == 1 and events[0].startswith(f"ambiguous: 2 LSL streams match name='{name}'")
        assert f"'{name}-b'" in events[0] and f"also found: source_id '{name}-a'" in events[0]
        source.close()
        alone = LSLSource(n_channels=3, period=PERIOD, name=name, source_id=f"{name}-a", resolve_timeout_s=10)
        assert not alone.events and alone.describe()["source_id"] == f"{name}-a"
        alone.close()
    finally:
        older.close()
        newer.close()


def test_channel_labels_are_matched_to_the_artifact_by_name():
    ids = [11, 12, 13, 14]
    name = h.unique("labels")
    outlet = CountsOutlet(name, 4, PERIOD, source_id=name, channel_labels=["13", "11", "14", "12"])
    try:
        source = LSLSource(n_channels=4, period=PERIOD, name=name, resolve_timeout_s=10, channel_ids=ids)
        assert "4 reordered by label" in source.channel_note
        source.start()
        assert outlet.wait_for_consumers(10)
        outlet.push(np.array([130, 110, 140, 120], np.float32))
        got = _pull(source, 1)
        np.testing.assert_array_equal(got[0][0], [110, 120, 130, 140])  # the artifact's order
        source.close()
        with pytest.raises(SourceError, match=r"not the artifact's channel_ids: 1 of the artifact's channels "
                                              r"missing \(99\); 1 channels the artifact does not know \(14\)"):
            LSLSource(n_channels=4, period=PERIOD, name=name, resolve_timeout_s=10, channel_ids=[11, 12, 13, 99])
    finally:
        outlet.close()
    unlabelled = CountsOutlet(name + "-u", 4, PERIOD, source_id=name + "-u")
    try:
        source = LSLSource(n_channels=4, period=PERIOD, name=name + "-u", resolve_timeout_s=10, channel_ids=ids)
        assert "no channel labels: channels are matched to the artifact by position only" in source.channel_note
        source.close()
    finally:
        unlabelled.close()
