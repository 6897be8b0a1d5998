"""productionlab: a hardened HTTP key-value store."""

__version__ = "0.1.0"
