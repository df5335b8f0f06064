"""Facts: the data model, loaders for common formats, relation templates, validation."""

from knowpack.facts.loaders import EASYEDIT_ANSWERS, FORMATS, detect_format, load_facts
from knowpack.facts.model import Fact, FactSet
from knowpack.facts.summary import format_summary, summarize
from knowpack.facts.templates import RelationTemplates, load_templates, templates_from_mapping

__all__ = ["Fact", "FactSet", "FORMATS", "EASYEDIT_ANSWERS", "load_facts", "detect_format", "summarize",
           "format_summary", "RelationTemplates", "load_templates", "templates_from_mapping"]
