"""WALL-WM network: vision encoder, decoder backbone, flow-matching action expert, heads."""
