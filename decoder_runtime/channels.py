"""Channel identity: which input column feeds which of the decoder's channels.

A decoder is trained on a fixed list of channels (the artifact's `channel_ids`: unit ids of
the training session). A stream from another headstage mapping, or a channel list from another
day, can have the same count in another order or different channels altogether, and would
decode silently wrong if matched by position. When the input names its channels (an LSL
stream's `desc/channels/channel/label`, which `stream-nwb` writes; an NWB session's unit ids),
they are matched to `channel_ids` by name: the same set in another order is reordered, a
different set is refused with the differences listed. Without names, matching is by position
only, and the note says so.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from decoder_runtime.sources import SourceError
from replay.session import BinnedSession

_SHOWN = 8  # ids listed per difference in an error before "... and N more"


def _listing(ids: list[str]) -> str:
    more = f" ... and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


def match_channels(expected: Sequence, found: Sequence | None, what: str) -> tuple[np.ndarray | None, str]:
    """(order, note): the input column for each of the decoder's channels, and what was done.

    `order` is None when the input already is in the decoder's order (or has no names, then
    the note says matching is by position); otherwise `counts[order]` is the decoder's input.
    Raises SourceError naming the differences when the names are not the decoder's channels.
    """
    want = [str(c) for c in expected]
    if not found or all(f is None or str(f) == "" for f in found):
        return None, f"{what} has no channel labels: channels are matched to the artifact by position only"
    got = ["" if f is None else str(f) for f in found]
    if len(set(got)) != len(got):
        dup = sorted({g for g in got if got.count(g) > 1})
        raise SourceError(f"{what} names a channel more than once ({_listing(dup)}); cannot match channels by label")
    missing = [w for w in want if w not in set(got)]
    extra = [g for g in got if g not in set(want)]
    if missing or extra:
        parts = [f"{len(missing)} of the artifact's channels missing ({_listing(missing)})" if missing else "",
                 f"{len(extra)} channels the artifact does not know ({_listing(extra)})" if extra else ""]
        raise SourceError(f"{what}'s channel labels are not the artifact's channel_ids: "
                          + "; ".join(p for p in parts if p))
    index = {g: i for i, g in enumerate(got)}
    order = np.array([index[w] for w in want], dtype=np.intp)
    if (order == np.arange(len(order))).all():
        return None, f"{what}'s {len(order)} channel labels match the artifact's channel_ids in order"
    moved = int(np.count_nonzero(order != np.arange(len(order))))
    return order, f"{what}'s channels are the artifact's in another order: {moved} reordered by label"


def align_session(session: BinnedSession, channel_ids: Sequence) -> tuple[BinnedSession, str]:
    """The session with its units in the artifact's channel order (matched by unit id), and a note.

    Raises SourceError listing the differences when the session's units are not the artifact's."""
    order, note = match_channels(channel_ids, [int(u) for u in session.unit_ids], "the session")
    if order is None:
        return session, note
    return BinnedSession(counts=session.counts[:, order], t=session.t, bin_width=session.bin_width,
                         unit_ids=session.unit_ids[order], velocity=session.velocity, valid=session.valid,
                         trials=session.trials, source=session.source, meta=session.meta), note
