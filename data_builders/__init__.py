"""TFDS dataset builders that write event-segmented episodes as ArrayRecord."""
