"""Every session to an NWB file, written as it runs, so a run can be replayed and audited.

Layout (one row per bin the engine took, in order; all rows share one timestamps dataset,
the bin's arrival time in seconds since the run started, which always increases):

- `acquisition/counts`: float32[T, C] the counts as they arrived (NaN row for a bin of the
  wrong length; NaN/negative values kept as they were: the flags say what was imputed, and
  imputation is deterministic from the artifact's training mean, so a record replays);
- `processing/misc/velocity`: float32[T, 2] the velocity sent, in the unit of the behaviour
  the artifact was trained on (e.g. mm/s, from its provenance);
- `processing/misc/t_src`: float64[T] source timestamps; `seq`: int64[T];
- `processing/misc/flags`: int32[T] decoder_runtime.messages.Flag bits;
- `processing/misc/stamps`: int64[T, 8] time.monotonic_ns() at each stage (`STAGES`;
  0 where a stage did not happen for that bin, e.g. no model step for a dropped bin);
- `general/data_collection`: JSON text `{"run_settings": ..., "artifact_config": ...}`, written
  at the start (how these data were produced); `general/subject`: the subject when the caller
  knows it (a replayed NWB session's own), else one marked unknown;
- `scratch/run_summary` and `scratch/events`: JSON text, added when the run closes (derived
  figures, not data).

Records from before this layout (`processing/decoder`, settings in `scratch`) read back too.
The file passes the NWB Inspector with no CRITICAL finding (tests/test_nwb_inspector.py).

Incremental writing: pynwb creates the file with empty, chunked, extendable datasets; then
the file stays open in h5py and every `block` bins (40 = 1 s of 25 ms bins) the rows are
appended and the file flushed. Between flushes the HDF5 file is not touched at all (rows
wait in preallocated numpy buffers), so a crash or kill leaves the file exactly as of the
last flush: readable by pynwb, losing at most the last block.
"""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path

import h5py
import numpy as np
from hdmf.backends.hdf5.h5_utils import H5DataIO
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.file import Subject

from decoder_runtime.messages import FLAG_NAMES
from decoder_runtime.timing import STAGES

_DECODER = "processing/misc"
_OLD_MODULE = "decoder"  # records written before the module took a name the NWB schema lists
# When the caller does not know the subject (a live LSL stream), say only what is certain:
# intracortical data come from a mammal (NCBI taxon Mammalia), of unknown sex and any age.
UNKNOWN_SUBJECT = {"subject_id": "unknown", "species": "http://purl.obolibrary.org/obo/NCBITaxon_40674",
                   "sex": "U", "age": "P0D/P100Y",
                   "description": "not told to the runtime: species given only as Mammalia (intracortical "
                                  "data), sex unknown, any age"}


def velocity_unit(artifact_config: dict) -> str:
    """The unit of the decoded velocity: that of the behaviour the artifact was trained on."""
    meta = (artifact_config.get("provenance") or {}).get("meta") or {}
    unit = meta.get("behavior_unit") or ""
    if not unit:
        return "unknown (the artifact does not record its training behaviour's unit)"
    return unit if meta.get("behavior_kind") == "velocity" else f"{unit}/s"


def _growable(shape_tail: tuple[int, ...], dtype, block: int) -> H5DataIO:
    return H5DataIO(np.zeros((0, *shape_tail), dtype=dtype), maxshape=(None, *shape_tail),
                    chunks=(block, *shape_tail))


class SessionRecorder:
    """Appends bins to an NWB file; `add` per bin is a few copies, `flush` writes a block."""

    def __init__(self, path: str | Path, n_channels: int, *, artifact_config: dict, settings: dict,
                 description: str, t0_ns: int, block: int = 40, subject: dict | None = None) -> None:
        self.path = Path(path)
        self.n_channels = n_channels
        self.block = block
        self.t0_ns = t0_ns
        self.n_written = 0
        self.pending = 0
        rows = 2 * block  # the engine flushes every `block` bins, or up to a whole block later (engine doc)
        self._counts = np.full((rows, n_channels), np.nan, dtype=np.float32)
        self._vel = np.zeros((rows, 2), dtype=np.float32)
        self._t_src = np.zeros(rows, dtype=np.float64)
        self._flags = np.zeros(rows, dtype=np.int32)
        self._seq = np.zeros(rows, dtype=np.int64)
        self._shape = (n_channels,)
        self._create(artifact_config, settings, description, subject or UNKNOWN_SUBJECT)
        self._h5 = h5py.File(self.path, "r+")
        self._ds = {
            "counts": self._h5["acquisition/counts/data"],
            "time": self._h5["acquisition/counts/timestamps"],
            "velocity": self._h5[f"{_DECODER}/velocity/data"],
            "t_src": self._h5[f"{_DECODER}/t_src/data"],
            "flags": self._h5[f"{_DECODER}/flags/data"],
            "seq": self._h5[f"{_DECODER}/seq/data"],
            "stamps": self._h5[f"{_DECODER}/stamps/data"],
        }

    def _create(self, artifact_config: dict, settings: dict, description: str, subject: dict) -> None:
        """The empty file, through pynwb so the result is valid NWB from the first byte."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        c, b = self.n_channels, self.block
        nwb = NWBFile(session_description=description, identifier=str(uuid.uuid4()),
                      session_start_time=datetime.now().astimezone(),
                      experiment_description="online decoding of cursor velocity from binned spike counts",
                      keywords=["brain-computer interface", "real-time decoding", "spike counts"],
                      subject=Subject(**{k: v for k, v in subject.items() if v not in (None, "")}),
                      data_collection=json.dumps({"run_settings": settings, "artifact_config": artifact_config},
                                                 default=str),
                      notes="Written by the spikestream runtime; see decoder_runtime/record.py for the layout.")
        counts = TimeSeries(name="counts", data=_growable((c,), np.float32, b), unit="spikes per bin",
                            timestamps=_growable((), np.float64, b),
                            description="input counts per bin as received (NaN row: wrong length)")
        nwb.add_acquisition(counts)
        module = nwb.create_processing_module("misc", "spikestream decoder: output and per-bin timing")
        flag_doc = ", ".join(f"{bit}={name}" for bit, name in FLAG_NAMES.items())
        for name, tail, dtype, unit, doc in (
            ("velocity", (2,), np.float32, velocity_unit(artifact_config), "velocity sent (vx, vy)"),
            ("t_src", (), np.float64, "s", "source timestamp of the bin"),
            ("flags", (), np.int32, "bitfield", f"decoder_runtime.messages.Flag bits: {flag_doc}"),
            ("seq", (), np.int64, "count", "message sequence number"),
            ("stamps", (len(STAGES),), np.int64, "ns", "time.monotonic_ns() per stage: " + ", ".join(STAGES)),
        ):
            module.add(TimeSeries(name=name, data=_growable(tail, dtype, b), unit=unit, timestamps=counts,
                                  description=doc))
        with NWBHDF5IO(str(self.path), "w") as io:
            io.write(nwb)

    def add(self, counts: np.ndarray, t_src: float, vx: float, vy: float, flags: int, seq: int) -> None:
        """Buffer one bin (no file access). The caller flushes by the time `pending` reaches 2 * block."""
        i = self.pending
        if counts.shape == self._shape:
            self._counts[i] = counts
        else:
            self._counts[i] = np.nan
        self._t_src[i] = t_src
        self._vel[i, 0] = vx
        self._vel[i, 1] = vy
        self._flags[i] = flags
        self._seq[i] = seq
        self.pending = i + 1

    def flush(self, stamps: np.ndarray) -> None:
        """Append the pending bins (with their stage stamps, [pending, 8]) and flush the file."""
        k = self.pending
        if k == 0:
            return
        if stamps.shape != (k, len(STAGES)):
            raise ValueError(f"stamps must be [{k}, {len(STAGES)}] for the pending bins, got {stamps.shape}")
        a, b = self.n_written, self.n_written + k
        for name, rows in (
            ("counts", self._counts[:k]), ("time", (stamps[:, 0] - self.t0_ns) * 1e-9),
            ("velocity", self._vel[:k]), ("t_src", self._t_src[:k]), ("flags", self._flags[:k]),
            ("seq", self._seq[:k]), ("stamps", stamps),
        ):
            ds = self._ds[name]
            ds.resize(b, axis=0)
            ds[a:b] = rows
        self._h5.flush()
        self.n_written = b
        self.pending = 0

    def close(self, summary: dict | None = None, events: list[str] | None = None) -> None:
        """Add the run's summary and events (pynwb append) and close the file.

        The engine flushes every bin it took before it returns; rows still pending here
        (a loop that died mid-bin) are written with zero stamps rather than lost.
        """
        if self.pending:
            self.flush(np.zeros((self.pending, len(STAGES)), dtype=np.int64))
        self._h5.close()
        with NWBHDF5IO(str(self.path), "a") as io:
            nwb = io.read()
            nwb.add_scratch(json.dumps(summary or {}, default=str), name="run_summary",
                            description="the run's latency, flag and accuracy summary")
            nwb.add_scratch(json.dumps(list(events or [])), name="events",
                            description="rare events during the run (stream silent/returned, adaptation), in order")
            io.write(nwb)


def read_record(path: str | Path) -> dict:
    """A record back as plain arrays and dicts (through pynwb, as any NWB reader would)."""
    with NWBHDF5IO(str(path), "r") as io:
        nwb = io.read()
        dec = nwb.processing["misc" if "misc" in nwb.processing else _OLD_MODULE]
        out = {
            "counts": nwb.acquisition["counts"].data[:],
            "time": nwb.acquisition["counts"].timestamps[:],
            **{name: dec[name].data[:] for name in ("velocity", "t_src", "flags", "seq", "stamps")},
            "velocity_unit": dec["velocity"].unit,
            **(json.loads(nwb.data_collection) if nwb.data_collection else {}),
            **{name: json.loads(nwb.scratch[name].data) for name in
               ("artifact_config", "run_settings", "run_summary", "events") if name in nwb.scratch},
        }
    return out
