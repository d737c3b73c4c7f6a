"""Data layer: event samples, normalisation, tokenisation and the Grain input pipeline."""
