"""Record activations of neural networks and analyse them with neuroscience-style methods."""

import warnings

__version__ = "0.1.0"

# Snakemake drops a timestamp file into directory outputs (our Zarr stores); Zarr warns about it on every read.
warnings.filterwarnings("ignore", message="Object at .snakemake_timestamp is not recognized")
