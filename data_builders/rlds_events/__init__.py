"""Any RLDS/TFDS dataset on disk as event-segmented episodes (TFDS `rlds_events`)."""

from data_builders.rlds_events.mapping import KeyMapping, convert_episode, resolve_mapping
from data_builders.rlds_events.rlds_events import RldsEvents, build, make_config, plan_splits

__all__ = ["KeyMapping", "RldsEvents", "build", "convert_episode", "make_config", "plan_splits",
           "resolve_mapping"]
