"""Read models built from the event log: applied inline, caught up, or rebuilt."""

from projections.engine import (
    append_and_rebuild,
    apply_inline,
    bring_up_to_date,
    catch_up,
    checkpoint,
    checkpoints,
    diff_live,
    fold,
    rebuild_pays,
    record,
    replay_as_of,
    replay_live,
)

__all__ = [
    "append_and_rebuild",
    "apply_inline",
    "bring_up_to_date",
    "catch_up",
    "checkpoint",
    "checkpoints",
    "diff_live",
    "fold",
    "rebuild_pays",
    "record",
    "replay_as_of",
    "replay_live",
]
