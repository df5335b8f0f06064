"""knowpack: pack new facts into a language model and measure what was learned and damaged."""

__version__ = "0.1.0"
