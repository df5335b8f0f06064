"""Facts: the data model, loaders for common formats, relation templates, validation."""

from knowpack.facts.model import Fact, FactSet

__all__ = ["Fact", "FactSet"]
