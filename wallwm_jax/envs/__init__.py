"""Simulator environments (MetaWorld/MuJoCo) with scripted experts and ground-truth phases."""
