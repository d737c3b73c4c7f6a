"""A LeRobot dataset (v3.0 layout on disk) as event-segmented episodes (TFDS
`lerobot_events`), with the key mapping of `data_builders.rlds_events`."""

from data_builders.lerobot_events.lerobot_events import (
    DEFAULT_MAPPING,
    LerobotEvents,
    build,
    make_config,
)
from data_builders.lerobot_events.source import LeRobotSource, read_info, resolve

__all__ = ["DEFAULT_MAPPING", "LeRobotSource", "LerobotEvents", "build", "make_config",
           "read_info", "resolve"]
