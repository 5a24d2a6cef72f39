"""What is persisted per entry, below both the scheduler core and the backends.

The core computes new states from old ones; the backends store them. Neither depends on the
other for this type, so a backend needs nothing of the planner and the planner nothing of a
backend.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple


# Made for every run published, so a named tuple: immutable like a frozen dataclass, at a
# third of the cost to create.
class EntryState(NamedTuple):
    """What is persisted per entry: the newest slot accounted for, and the newest published.

    `last_slot` is the horizon: every slot up to it has ended (published or missed), every slot
    after it is still to come. `identity` is the schedule it was measured against.
    """

    entry: str
    last_slot: datetime
    last_published: datetime | None
    identity: str
