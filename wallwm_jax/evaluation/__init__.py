"""Offline metrics and closed-loop evaluation in MetaWorld."""
