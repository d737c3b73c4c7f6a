"""Any RLDS/TFDS dataset on disk as event-segmented episodes (TFDS `rlds_events`)."""

from data_builders.common import plan_splits
from data_builders.rlds_events.mapping import (
    KeyMapping,
    SourceSpec,
    convert_episode,
    resolve_mapping,
)
from data_builders.rlds_events.rlds_events import RldsEvents, build, make_config

__all__ = ["KeyMapping", "RldsEvents", "SourceSpec", "build", "convert_episode", "make_config",
           "plan_splits", "resolve_mapping"]
