"""Relation templates: turn (subject, relation, object) triples into questions.

A template file is YAML mapping each relation to a list of question templates that contain
``{subject}``; the first is the canonical question, the rest are paraphrases::

    capital:
      - "What is the capital of {subject}?"
      - "Which city is the capital of {subject}?"
    birthplace: "Where was {subject} born?"      # a single template is fine too

Only ``{subject}`` is filled (the object is the answer, so it never appears in a question); any
other ``{name}`` placeholder is an error, caught when the file is read rather than mid-run.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from knowpack.errors import InputError

logger = logging.getLogger(__name__)

__all__ = ["RelationTemplates", "load_templates", "templates_from_mapping", "fill"]

PLACEHOLDER = "{subject}"
_OTHER_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
_STR_TAG = "tag:yaml.org,2002:str"
_EXAMPLE = 'e.g.  capital: ["What is the capital of {subject}?"]'


def fill(template: str, subject: str) -> str:
    """The template with ``{subject}`` replaced (plain replacement: other braces stay as written)."""
    return template.replace(PLACEHOLDER, subject)


@dataclass(frozen=True)
class RelationTemplates:
    """Question templates per relation; ``source`` and ``lines`` say where each relation was defined."""

    templates: Mapping[str, tuple[str, ...]]
    source: str | None = None
    lines: Mapping[str, int] = field(default_factory=dict)

    def __contains__(self, relation: object) -> bool:
        return relation in self.templates

    def __len__(self) -> int:
        return len(self.templates)

    def relations(self) -> list[str]:
        return list(self.templates)

    def render(self, relation: str, subject: str) -> tuple[str, tuple[str, ...]]:
        """(canonical question, paraphrases) for `subject`; KeyError if the relation has no template."""
        first, *rest = self.templates[relation]
        return fill(first, subject), tuple(fill(t, subject) for t in rest)

    def question(self, relation: str, subject: str) -> str:
        return self.render(relation, subject)[0]

    def paraphrases(self, relation: str, subject: str) -> tuple[str, ...]:
        return self.render(relation, subject)[1]

    def to_dict(self) -> dict[str, list[str]]:
        return {rel: list(ts) for rel, ts in self.templates.items()}


def _check_template(template: Any, relation: str, source: str | None, line: int | None) -> str:
    if not isinstance(template, str):
        raise InputError(f"a template must be a string, got {type(template).__name__} {template!r}; quote it",
                         path=source, line=line, field=relation)
    if PLACEHOLDER not in template:
        raise InputError(f"template {template!r} has no {PLACEHOLDER}; every template must name the subject, "
                         f"{_EXAMPLE}", path=source, line=line, field=relation)
    others = sorted({m for m in _OTHER_PLACEHOLDER.findall(template) if m != "subject"})
    if others:
        raise InputError(f"template {template!r} uses {', '.join('{' + o + '}' for o in others)}; only "
                         f"{PLACEHOLDER} is filled in", path=source, line=line, field=relation)
    return template


def templates_from_mapping(mapping: Mapping[str, Any], source: str | None = None,
                           lines: Mapping[str, int] | None = None,
                           template_lines: Mapping[str, Sequence[int]] | None = None) -> RelationTemplates:
    """Validate a relation → template(s) mapping (a string or a non-empty list of strings each)."""
    if not isinstance(mapping, Mapping):
        raise InputError("a template file must map each relation to its templates, " + _EXAMPLE, path=source)
    if not mapping:
        raise InputError("no relations defined, " + _EXAMPLE, path=source)
    lines = dict(lines or {})
    out: dict[str, tuple[str, ...]] = {}
    for relation, value in mapping.items():
        line = lines.get(str(relation))
        if not isinstance(relation, str) or not relation.strip():
            raise InputError(f"relation names must be non-empty strings, got {relation!r}", path=source, line=line)
        items = [value] if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise InputError(f"expected a list of templates, got {type(value).__name__} {value!r}; {_EXAMPLE}",
                             path=source, line=line, field=relation)
        if not items:
            raise InputError(f"relation '{relation}' has no templates; {_EXAMPLE}", path=source, line=line,
                             field=relation)
        per_line = list((template_lines or {}).get(relation, ()))
        out[relation] = tuple(_check_template(t, relation, source, per_line[i] if i < len(per_line) else line)
                              for i, t in enumerate(items))
    return RelationTemplates(out, source=source, lines=lines)


def load_templates(path: str | Path) -> RelationTemplates:
    """Read and validate a relation template file (YAML or JSON)."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError("template file not found; check the path", path=source) from None
    except IsADirectoryError:
        raise InputError("expected a template file, got a directory", path=source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise InputError(f"invalid UTF-8 (byte 0x{raw[exc.start]:02x}); save the file as UTF-8",
                         path=source, line=line) from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a control character; it carries a position, not a mark
        char = exc.character if isinstance(exc.character, str) else chr(exc.character or 0)
        raise InputError(f"character U+{ord(char):04X} is not allowed in YAML; remove it", path=source,
                         line=text.count("\n", 0, exc.position) + 1) from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        raise InputError(f"YAML syntax error: {' '.join(p for p in (exc.context, exc.problem) if p)}"
                         + (f" (column {mark.column + 1})" if mark else ""),
                         path=source, line=mark.line + 1 if mark else None) from None
    if node is None:
        raise InputError("the template file is empty; " + _EXAMPLE, path=source)
    if not isinstance(node, yaml.MappingNode):
        raise InputError("a template file must map each relation to its templates, " + _EXAMPLE,
                         path=source, line=node.start_mark.line + 1)
    mapping: dict[str, Any] = {}
    lines: dict[str, int] = {}
    template_lines: dict[str, list[int]] = {}
    for key_node, value_node in node.value:
        line = key_node.start_mark.line + 1
        if not isinstance(key_node, yaml.ScalarNode):
            raise InputError("relation names must be strings", path=source, line=line)
        relation = key_node.value
        if relation in mapping:
            raise InputError(f"relation '{relation}' is defined twice (first at line {lines[relation]}); merge "
                             "the two lists", path=source, line=line, field=relation)
        lines[relation] = line
        mapping[relation] = _node_value(value_node, relation, source)
        if isinstance(value_node, yaml.SequenceNode):
            template_lines[relation] = [n.start_mark.line + 1 for n in value_node.value]
        else:
            template_lines[relation] = [value_node.start_mark.line + 1]
    templates = templates_from_mapping(mapping, source=source, lines=lines, template_lines=template_lines)
    logger.debug("read %d relation template(s) from %s", len(templates), source)
    return templates


def _node_value(node: yaml.Node, relation: str, source: str) -> Any:
    """A template entry from its YAML node, keeping non-string scalars typed so they are reported."""
    if isinstance(node, yaml.ScalarNode):
        if node.tag != _STR_TAG:
            return yaml.safe_load(yaml.serialize(node))
        return node.value
    if isinstance(node, yaml.SequenceNode):
        return [_node_value(n, relation, source) for n in node.value]
    raise InputError("expected a template string or a list of them, got a mapping; " + _EXAMPLE,
                     path=source, line=node.start_mark.line + 1, field=relation)
