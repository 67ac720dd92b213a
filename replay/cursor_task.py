"""Cursor tasks a closed-loop session runs: center-out-and-back, and a random-target grid.

Everything is in mm and seconds, like the simulator's behaviour, so a decoded velocity in mm/s
moves the cursor directly (times a gain). The task is advanced once per bin with the cursor's
position at that bin (`update`); it keeps a `TrialRecord` per trial, from which
replay.task_metrics computes what labs report.

- center-out: 8 targets on a circle (`target_distance`) around the centre, in shuffled blocks
  of 8; each outward trial is followed by a trial back to the centre. A target is acquired by
  holding the cursor inside it (`target_radius`) for `hold_s` without leaving; a trial that
  is not acquired within `timeout_s` of target onset times out, and the next begins from
  wherever the cursor is.
- grid: an N x N grid of square cells tiling the central `grid_extent` of the workspace (like
  MC_RTT's 8 x 8 targets); one cell is the target. Dwelling `hold_s` in ANY cell selects it:
  the target cell is a correct selection, any other an incorrect one (both end the trial),
  so achieved bit rate (Nuyujukian et al.) can be computed. A timeout selects nothing.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TASKS = ("center-out", "grid")
_EPS = 1e-9


@dataclass(frozen=True)
class TaskSettings:
    """The task's geometry and timing (mm, s); defaults as labs run center-out.

    hold 500 ms and timeout 10 s as in Gilja et al. 2012 and Willett et al.'s simulator;
    targets 100 mm out (inside the 70-130 mm reaches the simulated open-loop data holds) with
    a 20 mm radius; the workspace is the +-150 mm square the cursor is clipped to.
    """

    task: str = "center-out"
    n_trials: int = 100
    target_distance: float = 100.0
    target_radius: float = 20.0
    n_targets: int = 8
    hold_s: float = 0.5
    timeout_s: float = 10.0
    workspace: float = 150.0  # half-width of the square workspace
    grid_size: int = 8
    grid_extent: float = 120.0  # half-width of the grid of cells (grid task)
    cursor_gain: float = 1.0

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if self.n_trials < 1 or self.n_targets < 1 or self.grid_size < 2:
            raise ValueError("n_trials and n_targets must be >= 1, grid_size >= 2")
        for name in ("target_distance", "target_radius", "timeout_s", "workspace", "grid_extent"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, got {self.hold_s}")
        if self.target_distance + self.target_radius > self.workspace or self.grid_extent > self.workspace:
            raise ValueError("targets must lie inside the workspace")

    @property
    def bounds(self) -> list[float]:
        """[xmin, xmax, ymin, ymax] of the workspace."""
        w = self.workspace
        return [-w, w, -w, w]

    @property
    def cell(self) -> float:
        """Width of one grid cell."""
        return 2 * self.grid_extent / self.grid_size


@dataclass
class TrialRecord:
    """One trial as it happened (times in s from the session start, positions in mm)."""

    index: int
    kind: str  # "out", "back" (center-out) or "grid"
    target: np.ndarray
    start_pos: np.ndarray
    t_start: float
    t_end: float = float("nan")
    outcome: str | None = None  # "success", "timeout" or (grid) "wrong"
    t_first_entry: float = float("nan")
    t_last_entry: float = float("nan")
    n_entries: int = 0
    path_length: float = 0.0  # cursor path from target onset to the last entry
    entry_pos: np.ndarray = field(default_factory=lambda: np.full(2, np.nan))
    selected: int = -1  # grid: the cell selected (-1: none)


class CursorTask:
    """The task's state machine, advanced once per bin by `update(t, cursor)`."""

    def __init__(self, settings: TaskSettings, *, seed: int) -> None:
        self.s = settings
        self._rng = np.random.default_rng([seed, 7])
        self._order: list[int] = []
        self.trials: list[TrialRecord] = []
        self.state = "reach"
        self._last: np.ndarray | None = None
        self._path = 0.0
        self._dwell_cell = -1
        self._dwell_since = 0.0
        self._inside = False

    @property
    def done(self) -> bool:
        return len(self.trials) >= self.s.n_trials and self.trials[-1].outcome is not None

    @property
    def current(self) -> TrialRecord | None:
        return self.trials[-1] if self.trials and self.trials[-1].outcome is None else None

    @property
    def target(self) -> np.ndarray | None:
        cur = self.current
        return None if cur is None else cur.target

    def _next_target(self) -> tuple[str, np.ndarray]:
        s = self.s
        if s.task == "grid":
            here = self.trials[-1].target if self.trials else None
            while True:
                i, j = self._rng.integers(s.grid_size, size=2)
                c = -s.grid_extent + s.cell * (np.array([i, j]) + 0.5)
                if here is None or not np.array_equal(c, here):
                    return "grid", c
        if self.trials and self.trials[-1].kind == "out":
            return "back", np.zeros(2)
        if not self._order:
            self._order = list(self._rng.permutation(s.n_targets))
        a = 2 * np.pi * self._order.pop(0) / s.n_targets
        return "out", s.target_distance * np.array([np.cos(a), np.sin(a)])

    def _begin(self, t: float, cursor: np.ndarray) -> None:
        kind, target = self._next_target()
        self.trials.append(TrialRecord(index=len(self.trials), kind=kind, target=target,
                                       start_pos=cursor.copy(), t_start=t))
        self._path = 0.0
        self._inside = False
        self._dwell_cell = -1
        self.state = "reach"

    def _end(self, t: float, outcome: str) -> None:
        tr = self.trials[-1]
        tr.t_end, tr.outcome = t, outcome
        self.state = "done" if self.done else "reach"

    def cell_of(self, p: np.ndarray) -> int:
        """Grid cell index (row-major from the lower left) under `p`, -1 outside the grid."""
        s = self.s
        ij = np.floor((p + s.grid_extent) / s.cell).astype(int)
        if np.any(ij < 0) or np.any(ij >= s.grid_size):
            return -1
        return int(ij[1] * s.grid_size + ij[0])

    def update(self, t: float, cursor: np.ndarray) -> None:
        """Advance to time `t` with the cursor at `cursor` (a trial begins at the first call and
        at the bin after each one ends)."""
        if self.done:
            return
        cursor = np.asarray(cursor, dtype=np.float64)
        if self.current is None:
            self._begin(t, cursor)
        elif self._last is not None:
            self._path += float(np.hypot(*(cursor - self._last)))
        self._last = cursor.copy()
        tr = self.trials[-1]
        if self.s.task == "grid":
            inside = self.cell_of(cursor) == self.cell_of(tr.target)
        else:
            inside = float(np.hypot(*(cursor - tr.target))) <= self.s.target_radius
        if inside and not self._inside:
            tr.n_entries += 1
            tr.t_last_entry = t
            if tr.n_entries == 1:
                tr.t_first_entry = t
            tr.path_length = self._path
            tr.entry_pos = cursor.copy()
        self._inside = inside
        self.state = "hold_target" if inside else "reach"
        if self._selection(t, cursor, tr, inside):
            return
        if t - tr.t_start >= self.s.timeout_s - _EPS:
            self._end(t, "timeout")

    def _selection(self, t: float, cursor: np.ndarray, tr: TrialRecord, inside: bool) -> bool:
        """Ends the trial when a hold completes; True if it did."""
        if self.s.task == "grid":
            cell = self.cell_of(cursor)
            if cell != self._dwell_cell:
                self._dwell_cell, self._dwell_since = cell, t
            if cell >= 0 and t - self._dwell_since >= self.s.hold_s - _EPS:
                tr.selected = cell
                self._end(t, "success" if cell == self.cell_of(tr.target) else "wrong")
                return True
            return False
        if inside and t - tr.t_last_entry >= self.s.hold_s - _EPS:
            self._end(t, "success")
            return True
        return False

    def state_message(self, t: float, seq: int, cursor: np.ndarray) -> dict:
        """The task's state as published on the `task` ZeroMQ topic (see benchmarks.closed_loop)."""
        ended = [tr for tr in self.trials if tr.outcome is not None]
        n_success = sum(tr.outcome == "success" for tr in ended)
        target = self.target
        return {"v": 1, "t": float(t), "seq": int(seq), "cursor": [float(cursor[0]), float(cursor[1])],
                "target": None if target is None else [float(target[0]), float(target[1])],
                "target_radius": float(self.s.cell / 2 if self.s.task == "grid" else self.s.target_radius),
                "workspace": self.s.bounds, "trial": len(self.trials) - 1, "state": self.state,
                "outcome": ended[-1].outcome if ended else None, "n_trials": self.s.n_trials,
                "n_success": int(n_success), "success_rate": n_success / len(ended) if ended else None}
