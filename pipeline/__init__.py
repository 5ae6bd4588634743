"""Record activations of neural networks and analyse them with neuroscience-style methods."""

__version__ = "0.1.0"
