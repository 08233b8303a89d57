"""cover-engine: deployment engine for the COVER video quality model."""
__version__ = "0.1.0"
