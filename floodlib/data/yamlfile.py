"""Reading YAML that people write by hand: a syntax error told in one line, with where it is."""

from __future__ import annotations

import yaml


def describe_yaml_error(error: yaml.YAMLError) -> str:
    """One line for a YAML error: ``line L, column C: problem (context at line L')``.

    PyYAML's own text spans several lines and names the input ``<unicode string>``, not the file, which the
    caller's message names instead."""
    mark = getattr(error, "problem_mark", None)
    if mark is None:
        return " ".join(str(error).split())
    text = f"line {mark.line + 1}, column {mark.column + 1}: {getattr(error, 'problem', None) or 'unreadable'}"
    context, context_mark = getattr(error, "context", None), getattr(error, "context_mark", None)
    if context and context_mark is not None and context_mark.line != mark.line:
        text += f" ({context} at line {context_mark.line + 1})"
    elif context:
        text += f" ({context})"
    return text
