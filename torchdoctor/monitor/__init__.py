"""``watch()``: monitors for the user's own training loop, cheap enough to leave on.

The package is named ``monitor`` (not ``watch``) so that ``torchdoctor.watch`` stays the
function users call. ``watch`` holds the context manager; the other modules are its parts:
``hooks`` (what is recorded per step), ``stats`` (device-side buffers), ``reader``
(turning buffers into figures), ``analysis`` (figures into findings), ``replay`` (naming
the module of a NaN), ``modes`` (train/eval misuse), ``policy`` and ``report``.
"""

from torchdoctor.monitor.watch import KINDS, Thresholds, Watch, WatchStats, watch

__all__ = ["KINDS", "Thresholds", "Watch", "WatchStats", "watch"]
