"""Left/right pairs: what a mirror image along the body's left-right axis turns a task into.

Mirroring a scan left-right turns the left parotid into a right one. Training augmentation and
test-time augmentation may only mirror along that axis when every lateral task can be swapped
for its partner: a flipped image asked for ``parotid_left`` shows the mirror of the right
parotid. A task is lateral when its label ends in ``_left`` or ``_right`` (the catalogue's
convention for every paired structure, see ``codes._PAIRED``); ``left_ventricle`` or the
hippocampus' ``anterior``/``posterior`` are not pairs, and a left-right flip leaves them as they
are.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["NO_PARTNER", "lateral_partner", "left_right_axis", "mirror_rows"]

#: In :func:`mirror_rows`: a lateral task whose partner is not in the list.
NO_PARTNER = -1

_SIDES = (("_left", "_right"), ("_right", "_left"))


def lateral_partner(task_id: str) -> str | None:
    """The other side of a paired task (``openkbp/parotid_left`` -> ``openkbp/parotid_right``);
    None for a task without a side."""
    prefix, slash, label = task_id.rpartition("/")
    for side, other in _SIDES:
        if label.endswith(side) and len(label) > len(side):
            return f"{prefix}{slash}{label[: -len(side)]}{other}"
    return None


def mirror_rows(task_ids: Sequence[str]) -> list[int]:
    """Per task, the row that a left-right mirror image asks for instead.

    Its own row for a task without a side, its partner's row for a lateral task whose partner is
    in ``task_ids``, and :data:`NO_PARTNER` for a lateral task whose partner is missing (such a
    task cannot be mirrored left-right).
    """
    rows = {t: i for i, t in enumerate(task_ids)}
    out = []
    for i, task in enumerate(task_ids):
        partner = lateral_partner(task)
        out.append(i if partner is None else rows.get(partner, NO_PARTNER))
    return out


def left_right_axis(orientation: str) -> int:
    """The array axis along the body's left-right direction in a canonical ``orientation``
    (``RAS`` -> 0)."""
    for axis, code in enumerate(orientation.upper()):
        if code in "LR":
            return axis
    raise ValueError(f"orientation {orientation!r} has no left-right axis (R or L)")
