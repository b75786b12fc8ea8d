"""labelblocks: a self-hosted, plugin-based runner for AI labeling blocks."""

__version__ = "0.1.0"
