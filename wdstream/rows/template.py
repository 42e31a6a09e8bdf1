"""Text templates over a row's columns, used by both wings: the converter's ``--text-template``
and registry entries (``text_template`` in configs/datasets.yaml).

``TextTemplate("{instruction}\n{input}\n{output}").render(row)`` formats each line from the
row's columns; a line whose fields are all empty is dropped, ``None`` and missing list items
format as empty, and ``{caption[0]}`` indexes into a list column.
"""

from __future__ import annotations

import re
import string
from collections.abc import Mapping
from typing import Any

from ..errors import ColumnError, ConfigError

__all__ = ["TextTemplate", "check_template"]

# A format field: a column name, then any number of [index] parts: caption[0], meta[lang].
_FIELD_RE = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]+\])*)$")
_INDEX_RE = re.compile(r"\[([^\[\]]+)\]")


def _parse_field(field_name: str, where: str) -> tuple[str, tuple[int | str, ...]]:
    m = _FIELD_RE.match(field_name)
    if not m or "." in m.group(1):
        raise ConfigError(
            f"{where}: bad template field {{{field_name}}}; use a column name, "
            f"optionally indexed, e.g. {{caption}} or {{caption[0]}}"
        )
    index = tuple(int(i) if i.lstrip("-").isdigit() else i for i in _INDEX_RE.findall(m.group(2)))
    return m.group(1), index


def _template_lines(template: str, where: str):
    """``[(literal/field parts, has_fields)]`` per template line, parsed once."""
    lines = []
    for line in template.split("\n"):
        parts: list[tuple[str, tuple[str, tuple, str, str | None] | None]] = []
        try:
            parsed = list(string.Formatter().parse(line))
        except ValueError as exc:
            raise ConfigError(f"{where}: bad text template {template!r}: {exc}") from exc
        for literal, field_name, spec, conv in parsed:
            if literal:
                parts.append((literal, None))
            if field_name is not None:
                if field_name == "" or field_name.isdigit():
                    raise ConfigError(
                        f"{where}: template fields must name a column, not {{{field_name}}}"
                    )
                column, index = _parse_field(field_name, where)
                parts.append(("", (column, index, spec or "", conv)))
        lines.append((parts, any(p[1] is not None for p in parts)))
    return lines


class TextTemplate:
    """A text template over a row's columns: ``"{instruction}\n{input}\n{output}"``.

    ``None`` and missing list items format as empty; a line whose fields are all empty is
    dropped (so an empty ``input`` leaves no blank line). Used by registry entries when
    streaming and by the converter (``--text-template``); picklable.
    """

    def __init__(self, template: str, where: str = "text template"):
        self.template = template
        self.where = where
        self._lines = tuple(_template_lines(template, where))

    def __reduce__(self):
        return (TextTemplate, (self.template, self.where))

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns the template reads, in order of first use."""
        seen: list[str] = []
        for parts, _ in self._lines:
            for _, spec in parts:
                if spec is not None and spec[0] not in seen:
                    seen.append(spec[0])
        return tuple(seen)

    def render(self, row: Mapping[str, Any]) -> str:
        """The text of ``row``. Raises ColumnError if a template column is not in the row."""
        out: list[str] = []
        for parts, has_fields in self._lines:
            pieces: list[str] = []
            any_value = False
            for literal, spec in parts:
                if spec is None:
                    pieces.append(literal)
                    continue
                value = self._value(row, spec[0], spec[1])
                if value is None:
                    continue
                if spec[3]:
                    value = {"r": repr, "s": str, "a": ascii}[spec[3]](value)
                text = format(value, spec[2])
                any_value = any_value or bool(text.strip())
                pieces.append(text)
            if has_fields and not any_value:
                continue
            out.append("".join(pieces))
        return "\n".join(out)

    def _value(self, row: Mapping[str, Any], column: str, index: tuple) -> Any:
        try:
            value = row[column]
        except KeyError:
            raise ColumnError(
                f"{self.where}: column {column!r} is not in the row (columns: {sorted(row)}); "
                f"fix the text template",
                key=column,
            ) from None
        for i in index:
            try:
                value = value[i]
            except (IndexError, KeyError, TypeError):
                return None
            if value is None:
                return None
        return value


def check_template(template: str, where: str) -> None:
    """Raise ConfigError when ``template`` does not parse (``where`` names its place)."""
    _template_lines(template, where)
