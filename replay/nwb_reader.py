"""NWB file -> BinnedSession: spike counts, behavioural velocity, trials, unit ids.

Layouts understood:
- NLB MC_Maze / MC_RTT: `units` (spike_times) and, in `processing/behavior`, a recorded
  velocity (`hand_vel`, `finger_vel`, `cursor_vel`) or failing that a position (`hand_pos`,
  `finger_pos`, `cursor_pos`) that is differentiated; the `trials` table when present.
- Generic: `units` plus any TimeSeries named by `behavior`, either by path
  ("processing/behavior/cursor_pos", "acquisition/joystick") or by a name found anywhere
  in the file. Its kind (velocity or position) comes from the name ("vel" / "pos") or from
  `behavior_kind`.

How behaviour lands on bins: each bin's value is the MEAN of the behaviour samples whose
timestamps fall in the bin's own half-open window [end - bin_width, end), the same window
its spike counts come from. This is a boxcar anti-alias filter followed by decimation, the
causal counterpart of NLB's resampling (nlb_tools decimates behaviour with a zero-phase FIR
filter, which looks slightly into the future; a streaming decoder's target must not). Bins
that hold no sample because the series is sampled more coarsely than the bins take the
linear interpolation at the bin centre. A bin is masked (NaN velocity, valid=False) when any
of its samples is NaN/inf or when it lies in a timestamp gap (an interval longer than
GAP_FACTOR x the median sample interval) or outside the series; masked bins are counted in
`meta["behavior_gaps"]` and warned about, never zero-filled.

Before anything is allocated, the size of the binned session is worked out from the time
range and the unit count: a file whose timestamps span an absurd range (1e7 s would be 4e8
bins) is refused with one line naming the range and the limit, `max_session_mb` (default
SPIKESTREAM_MAX_SESSION_MB or 4096), instead of exhausting memory. What would otherwise pass
silently is warned about (and listed in `meta["warnings"]`): negative spike times, spikes
outside the binned range (the range follows the behaviour, so a behaviour series much shorter
than the spikes trims the session), and units with no spike in the binned range. A session
where no unit has a spike is refused.
"""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from replay.binning import Ragged, bin_edges, bin_spike_times
from replay.session import DEFAULT_BIN_WIDTH, BinnedSession

NLB_VELOCITY = ("hand_vel", "finger_vel", "cursor_vel")
NLB_POSITION = ("hand_pos", "finger_pos", "cursor_pos")
BEHAVIOR_KINDS = ("auto", "velocity", "position")
GAP_FACTOR = 2.5
EDGE_TOLERANCE = 1e-6
MAX_SESSION_MB_ENV = "SPIKESTREAM_MAX_SESSION_MB"
DEFAULT_MAX_SESSION_MB = 4096.0
TRIMMED_WARN_FRACTION = 0.05  # warn when more than this share of the spikes lies outside the bins


class NWBFormatError(ValueError):
    """The file cannot be read as a spike-sorted NWB session; the message says what is wrong."""


def read_nwb(
    path: str | os.PathLike,
    bin_width: float = DEFAULT_BIN_WIDTH,
    behavior: str | None = None,
    t_start: float | None = None,
    t_stop: float | None = None,
    behavior_kind: str = "auto",
    max_session_mb: float | None = None,
) -> BinnedSession:
    """Bin one NWB session. The time range defaults to the span of the behaviour series.

    `max_session_mb` bounds the binned session's memory (default: $SPIKESTREAM_MAX_SESSION_MB,
    else 4096); a larger one is refused before anything is allocated."""
    from pynwb import NWBHDF5IO

    if not bin_width > 0:
        raise ValueError(f"bin_width must be > 0 seconds, got {bin_width}")
    if behavior_kind not in BEHAVIOR_KINDS:
        raise ValueError(f"behavior_kind must be one of {BEHAVIOR_KINDS}, got {behavior_kind!r}")
    path = Path(path)
    if not path.is_file():
        raise NWBFormatError(f"{path}: no such file")
    try:
        io = NWBHDF5IO(str(path), "r")
    except Exception as e:  # h5py raises OSError for truncated/non-HDF5 files, others vary
        raise NWBFormatError(f"{path}: cannot open as an NWB/HDF5 file "
                             f"(truncated, corrupt or not NWB): {e}") from e
    with io:
        try:
            nwb = io.read()
        except Exception as e:
            raise NWBFormatError(f"{path}: not a readable NWB file: {e}") from e
        try:
            spikes, unit_ids = _read_units(nwb, path)
            series, where, kind = _find_behavior(nwb, path, behavior, behavior_kind)
            ts, values = _read_series(series, where, path)
            trials = _read_trials(nwb)
        except OSError as e:  # a dataset whose bytes are cut off fails only when read
            raise NWBFormatError(f"{path}: data cannot be read (truncated or corrupt): {e}") from e
        meta = {"nwb_identifier": nwb.identifier, "session_description": nwb.session_description,
                "behavior_series": where, "behavior_kind": kind,
                "behavior_unit": getattr(series, "unit", ""), "notes": nwb.notes or "",
                "timeseries": {p: tuple(s.data.shape) for p, s in _all_timeseries(nwb).items()},
                "subject": _subject(nwb)}
    velocity_samples = values if kind == "velocity" else differentiate(ts, values)
    t0 = float(ts[0]) if t_start is None else float(t_start)
    t1 = float(ts[-1] + _median_step(ts)) if t_stop is None else float(t_stop)
    n_bins = int(np.floor((t1 - t0) / bin_width + 1e-9))
    if n_bins < 1:
        raise ValueError(f"time range [{t0}, {t1}) holds no whole bin of {bin_width} s")
    _check_size(path, where, t0, t1, n_bins, unit_ids.size, bin_width, max_session_mb)
    meta["warnings"] = _spike_warnings(path, where, spikes, unit_ids, t0, t0 + n_bins * bin_width,
                                       chosen_range=t_start is not None or t_stop is not None)
    edges = bin_edges(t0, n_bins, bin_width)
    velocity, valid, gaps = resample_to_bins(ts, velocity_samples, edges)
    gaps["nan_samples"] = int((~np.all(np.isfinite(values), axis=1)).sum())  # as recorded
    meta["behavior_gaps"] = gaps
    if gaps["masked_bins"]:
        warnings.warn(f"{path}: behaviour '{where}' is missing or NaN in {gaps['masked_bins']} "
                      f"of {n_bins} bins ({100 * gaps['fraction']:.1f}%); those bins are masked "
                      "(valid=False)", stacklevel=2)
    counts = bin_spike_times(spikes, t0, n_bins, bin_width)
    if not counts.any():
        raise NWBFormatError(f"{path}: no unit has a spike in the binned range [{t0:g}, {t1:g}) s")
    if trials is not None:
        keep = (trials["start_time"] < t1) & (trials["stop_time"] > t0)
        trials = {k: v[keep] for k, v in trials.items()}
    return BinnedSession(counts=counts, t=edges[1:], bin_width=float(bin_width), unit_ids=unit_ids,
                         velocity=velocity, valid=valid, trials=trials, source=str(path), meta=meta)


def max_session_mb(limit: float | None = None) -> float:
    """The memory limit for one binned session in MB: `limit`, else the environment, else 4096."""
    if limit is None:
        env = os.environ.get(MAX_SESSION_MB_ENV)
        try:
            limit = float(env) if env else DEFAULT_MAX_SESSION_MB
        except ValueError:
            raise ValueError(f"{MAX_SESSION_MB_ENV}={env!r} is not a number of megabytes") from None
    if not limit > 0:
        raise ValueError(f"the session memory limit must be > 0 MB, got {limit}")
    return float(limit)


def _check_size(path: Path, where: str, t0: float, t1: float, n_bins: int, n_units: int, bin_width: float,
                limit_mb: float | None) -> None:
    """Refuse a session whose bins would not fit the memory limit, before allocating them."""
    limit = max_session_mb(limit_mb)
    # counts float32[T, C]; velocity, means, valid, edges: ~40 bytes a bin
    need_mb = n_bins * (4.0 * n_units + 40.0) / 2**20
    if need_mb > limit:
        raise NWBFormatError(
            f"{path}: '{where}' spans {t1 - t0:.6g} s ({t0:.6g} .. {t1:.6g}), {n_bins:,} bins of "
            f"{bin_width * 1e3:g} ms x {n_units} units = {need_mb:,.0f} MB, over the {limit:,.0f} MB limit "
            f"(timestamps wrong? else raise {MAX_SESSION_MB_ENV} or read a shorter range)")


def _spike_warnings(path: Path, where: str, spikes: Ragged, unit_ids: np.ndarray, t0: float, t1: float,
                    chosen_range: bool) -> list[str]:
    """Warn (and return the texts) about spikes the bins will not hold and units without spikes
    (spikes outside a range the caller chose with t_start / t_stop are expected)."""
    flat, ends = spikes
    out = []
    negative = int(np.count_nonzero(flat < 0))
    if negative:
        out.append(f"{path}: {negative:,} spike times are negative (earliest {flat.min():.6g} s); they are "
                   "before the session start and are not counted")
    outside = int(np.count_nonzero((flat < t0) | (flat >= t1)))
    if not chosen_range and flat.size and outside > TRIMMED_WARN_FRACTION * flat.size:
        out.append(f"{path}: {outside:,} of {flat.size:,} spikes ({100 * outside / flat.size:.0f}%) lie outside "
                   f"the binned range [{t0:.6g}, {t1:.6g}) s set by behaviour '{where}' (spikes span "
                   f"{flat.min():.6g} .. {flat.max():.6g} s); the session is trimmed to the behaviour")
    cum = np.concatenate([[0], np.cumsum((flat >= t0) & (flat < t1))])
    ends = np.asarray(ends, dtype=np.int64)
    inside = cum[ends] - cum[np.concatenate([[0], ends[:-1]])]  # spikes in range, per unit
    silent = unit_ids[inside == 0]
    if 0 < silent.size < unit_ids.size:
        shown = ", ".join(str(u) for u in silent[:10]) + (" ..." if silent.size > 10 else "")
        out.append(f"{path}: {silent.size} of {unit_ids.size} units have no spike in the binned range "
                   f"(ids {shown}); they carry no information for decoding")
    for text in out:
        warnings.warn(text, stacklevel=3)
    return out


def _subject(nwb) -> dict | None:
    """The file's Subject as plain fields (a record of a replayed session carries it on)."""
    sub = nwb.subject
    if sub is None:
        return None
    fields = ("subject_id", "species", "sex", "age", "description", "strain", "genotype")
    return {k: str(getattr(sub, k)) for k in fields if getattr(sub, k, None) not in (None, "")}


def _read_units(nwb, path: Path) -> tuple[Ragged, np.ndarray]:
    units = nwb.units
    if units is None:
        raise NWBFormatError(f"{path}: no units table (expected /units with a spike_times column)")
    if "spike_times" not in units.colnames:
        raise NWBFormatError(f"{path}: the units table has no spike_times column "
                             f"(columns: {list(units.colnames)})")
    if len(units.id) == 0:
        raise NWBFormatError(f"{path}: the units table holds no units")
    index = units["spike_times"]
    flat = np.asarray(index.target.data[:])
    ends = np.asarray(index.data[:])
    if flat.dtype.kind not in "fiu":
        raise NWBFormatError(f"{path}: units.spike_times must be numeric seconds, found dtype {flat.dtype}")
    if flat.ndim != 1:
        raise NWBFormatError(f"{path}: units.spike_times must be 1-D, found shape {flat.shape}")
    if not np.all(np.isfinite(flat)):
        raise NWBFormatError(f"{path}: units.spike_times holds non-finite values")
    ids = np.asarray(units.id.data[:])
    if ids.dtype.kind not in "iu":
        raise NWBFormatError(f"{path}: units ids must be integers, found dtype {ids.dtype}")
    try:
        ragged = Ragged(flat.astype(np.float64), ends)
        bin_spike_times(ragged, 0.0, 0, 1.0)  # validates the index against the data
    except (TypeError, ValueError) as e:
        raise NWBFormatError(f"{path}: units.spike_times_index is inconsistent: {e}") from e
    return ragged, ids.astype(np.int64)


def _all_timeseries(nwb) -> dict[str, object]:
    """Every TimeSeries in the file, keyed by its path inside the file."""
    from pynwb import TimeSeries

    found = {}
    for obj in nwb.objects.values():
        if isinstance(obj, TimeSeries):
            parts, o = [], obj
            while o is not None and o is not nwb:
                parts.append(o.name)
                o = o.parent
            if o is nwb:
                top = parts[-1]
                for group in ("processing", "acquisition", "stimulus"):
                    if top in getattr(nwb, group):
                        parts.append(group)
                        break
                found["/".join(reversed(parts))] = obj
    return found


def _find_behavior(nwb, path: Path, behavior: str | None, kind: str) -> tuple[object, str, str]:
    """The behaviour series to decode, its path in the file and whether it is velocity."""
    series = _all_timeseries(nwb)
    if behavior is None:
        module = nwb.processing.get("behavior")
        names = {"auto": NLB_VELOCITY + NLB_POSITION, "velocity": NLB_VELOCITY, "position": NLB_POSITION}[kind]
        for name in names:
            if module is not None and name in module.data_interfaces:
                where = f"processing/behavior/{name}"
                return module[name], where, "velocity" if name in NLB_VELOCITY else "position"
        raise NWBFormatError(
            f"{path}: no behaviour: none of {', '.join(names)} in "
            f"processing/behavior; name the series with behavior= (TimeSeries in this file: "
            f"{sorted(series) or 'none'})")
    matches = [p for p in series if p == behavior.strip("/")] or \
              [p for p in series if p.rsplit("/", 1)[-1] == behavior]
    if not matches:
        raise NWBFormatError(f"{path}: no behaviour TimeSeries {behavior!r} (TimeSeries in this "
                             f"file: {sorted(series) or 'none'})")
    if len(matches) > 1:
        raise NWBFormatError(f"{path}: behaviour name {behavior!r} is ambiguous: {sorted(matches)}; "
                             "give the full path")
    where = matches[0]
    if kind == "auto":
        leaf = where.rsplit("/", 1)[-1].lower()
        if re.search(r"vel", leaf):
            kind = "velocity"
        elif re.search(r"pos", leaf):
            kind = "position"
        else:
            raise NWBFormatError(f"{path}: cannot tell whether {where!r} is a velocity or a "
                                 "position; pass behavior_kind='velocity' or 'position'")
    return series[where], where, kind


def _read_series(series, where: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps float64[N], values float64[N, 2]) of a behaviour TimeSeries, checked."""
    data = np.asarray(series.data[:])
    if data.dtype.kind not in "fiu":
        raise NWBFormatError(f"{path}: behaviour {where!r} must be numeric, found dtype {data.dtype}")
    if data.ndim != 2 or data.shape[1] < 2:
        raise NWBFormatError(f"{path}: behaviour {where!r} must be [time, >=2 (x, y, ...)], found "
                             f"shape {data.shape}")
    if data.shape[0] < 2:
        raise NWBFormatError(f"{path}: behaviour {where!r} has fewer than 2 samples")
    if series.timestamps is not None:
        ts = np.asarray(series.timestamps[:], dtype=np.float64)
    else:
        if not (series.rate and series.rate > 0):
            raise NWBFormatError(f"{path}: behaviour {where!r} has neither timestamps nor a rate")
        ts = float(series.starting_time or 0.0) + np.arange(data.shape[0]) / float(series.rate)
    if ts.shape != (data.shape[0],):
        raise NWBFormatError(f"{path}: behaviour {where!r}: {ts.size} timestamps for "
                             f"{data.shape[0]} samples")
    if not np.all(np.isfinite(ts)) or np.any(np.diff(ts) <= 0):
        raise NWBFormatError(f"{path}: behaviour {where!r} timestamps must be finite and increasing")
    return ts, data[:, :2].astype(np.float64)


def _read_trials(nwb) -> dict[str, np.ndarray] | None:
    """Trial columns as arrays (ragged columns as object arrays of arrays)."""
    from hdmf.common import VectorIndex

    table = nwb.trials
    if table is None or len(table.id) == 0:
        return None
    out = {}
    for name in table.colnames:
        col = table[name]
        if isinstance(col, VectorIndex):
            out[name] = np.array([np.asarray(x) for x in col[:]] + [None], dtype=object)[:-1]
            continue
        values = np.asarray(col.data[:])
        if values.dtype.kind in "SO":
            values = np.array([v.decode() if isinstance(v, bytes) else v for v in values], dtype=object)
        out[name] = values
    return out


def _median_step(ts: np.ndarray) -> float:
    return float(np.median(np.diff(ts)))


def differentiate(ts: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Velocity from position by central differences, never across a timestamp gap.

    NaN positions give NaN velocities around them (so those bins are masked downstream).
    """
    vel = np.full_like(pos, np.nan)
    gap_after = np.flatnonzero(np.diff(ts) > GAP_FACTOR * _median_step(ts))
    bounds = np.concatenate([[0], gap_after + 1, [ts.size]])
    for a, b in zip(bounds[:-1], bounds[1:]):
        if b - a >= 2:
            vel[a:b] = np.gradient(pos[a:b], ts[a:b], axis=0)
    return vel


def resample_to_bins(ts: np.ndarray, values: np.ndarray, edges: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Per-bin mean of the samples in [edges[k], edges[k+1]); see the module docstring.

    Returns (float32[T, 2] with NaN where masked, valid bool[T], gap report).
    """
    n_bins = edges.size - 1
    finite = np.all(np.isfinite(values), axis=1)
    # Samples nominally on an edge (k / rate == j * bin_width) can land a rounding error
    # either side of it; EDGE_TOLERANCE of a sample interval puts them in the later bin.
    k = np.searchsorted(edges - EDGE_TOLERANCE * _median_step(ts), ts, side="right") - 1
    inside = (k >= 0) & (k < n_bins)
    kk, ok = k[inside], finite[inside]
    n_good = np.bincount(kk[ok], minlength=n_bins)
    n_bad = np.bincount(kk[~ok], minlength=n_bins)
    sums = np.stack([np.bincount(kk[ok], weights=values[inside][ok][:, d], minlength=n_bins)
                     for d in range(values.shape[1])], axis=1)
    out = np.full((n_bins, values.shape[1]), np.nan)
    has = (n_good > 0) & (n_bad == 0)
    out[has] = sums[has] / n_good[has, None]
    # Bins with no sample at all: interpolate at the centre unless they sit in a gap.
    empty = np.flatnonzero((n_good == 0) & (n_bad == 0))
    interpolated = 0
    if empty.size:
        centre = 0.5 * (edges[empty] + edges[empty + 1])
        j = np.searchsorted(ts, centre)
        inner = (j > 0) & (j < ts.size)
        jl, jr = np.clip(j - 1, 0, ts.size - 1), np.clip(j, 0, ts.size - 1)
        close = inner & (ts[jr] - ts[jl] <= GAP_FACTOR * _median_step(ts)) & finite[jl] & finite[jr]
        w = np.where(close, (centre - ts[jl]) / np.where(close, ts[jr] - ts[jl], 1.0), 0.0)[:, None]
        fill = empty[close]
        out[fill] = (values[jl] * (1 - w) + values[jr] * w)[close]
        interpolated = int(close.sum())
    valid = np.all(np.isfinite(out), axis=1)
    masked = int(n_bins - valid.sum())
    report = {"masked_bins": masked, "fraction": masked / n_bins,
              "nan_samples": int((~finite).sum()),
              "time_gaps": int(np.sum(np.diff(ts) > GAP_FACTOR * _median_step(ts))),
              "interpolated_bins": interpolated}
    return out.astype(np.float32), valid, report
