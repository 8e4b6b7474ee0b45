"""cltm: the Cross-Lingual Transfer Matrix pipeline."""

__version__ = "0.1.0"
