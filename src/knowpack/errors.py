"""Errors meant for users: the CLI prints their message and exits with status 2, no traceback.

Each error names where the problem is (file, line, key or field) and, where one exists, the fix.
They subclass ValueError too, so library callers can catch them the ordinary way.
"""

from __future__ import annotations


class KnowpackError(ValueError):
    """A mistake in the user's input or set-up; the message says what and where."""

    exit_code = 2


class InputError(KnowpackError):
    """A malformed input file: facts, templates, prompts."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        self.path, self.line, self.field = path, line, field
        super().__init__(f"{': '.join([', '.join(where)] if where else [])}{': ' if where else ''}{message}")


class ConfigError(KnowpackError):
    """One or more invalid config keys or values, all reported together."""

    def __init__(self, problems: list[str], *, source: str | None = None):
        self.problems = list(problems)
        head = f"invalid config{f' in {source}' if source else ''}"
        if len(self.problems) == 1:
            super().__init__(f"{head}: {self.problems[0]}")
        else:
            super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))


class ModelError(KnowpackError):
    """A model or tokenizer that cannot be loaded or used as asked."""
