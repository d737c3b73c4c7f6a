"""MetaWorld scripted-expert episodes with ground-truth events (TFDS `metaworld_events`)."""

from data_builders.metaworld_events.metaworld_events import MetaworldEvents, build, make_config

__all__ = ["MetaworldEvents", "build", "make_config"]
