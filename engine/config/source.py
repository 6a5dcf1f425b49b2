"""Reading a config file's text into data, strictly: one error per file, with its line.

JSON is read by :func:`json.loads`, YAML by PyYAML's safe loader (YAML 1.1: anchors, aliases and
``<<`` merge keys work as PyYAML's ``safe_load`` reads them), with three checks the plain loaders
do not make, each a :class:`~clipeval.engine.errors.ConfigError` naming ``FILE:LINE``:

* a key repeated in one mapping (JSON object or YAML mapping) is an error naming both lines: the
  plain loaders keep the last value silently, so a stray duplicate would decide the run. Keys
  brought in by a ``<<`` merge key may be overridden, as YAML defines;
* a YAML alias that refers to a node holding it (``a: &x {b: *x}``, ``<<: *x`` inside ``&x``)
  is an error: the data would be infinitely deep;
* aliases that expand to more than :data:`MAX_VALUES` values (a "billion laughs" document) are
  an error, and so is nesting deeper than the interpreter can follow.

A syntax error is one line ``FILE:LINE:COLUMN: what`` (PyYAML's and json's own wording) instead
of PyYAML's several lines naming ``"<unicode string>"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["MAX_VALUES", "parse_config_text"]

# Values (scalars, lists, mappings, keys included) a config may expand to through its aliases.
MAX_VALUES = 100_000
MERGE_TAG = "tag:yaml.org,2002:merge"
SYNTAX_REMEDY = "fix the syntax at the place named (YAML: indentation, `key: value` pairs, quotes)"

Loc = tuple


SELF_ALIAS_REMEDY = "point the alias at a node outside the one holding it, or write the values out"


class _Duplicate(Exception):
    def __init__(self, key: str, first: tuple[int, int] | None, second: tuple[int, int] | None):
        super().__init__(key)
        self.key, self.first, self.second = key, first, second


def _make_loader():
    import yaml
    from yaml.composer import ComposerError

    class SelfAlias(ComposerError):
        """An alias inside the node its anchor names."""

    class StrictLoader(yaml.SafeLoader):
        """PyYAML's safe loader that refuses self-referring aliases and repeated keys."""

        def __init__(self, stream):
            super().__init__(stream)
            self.open_anchors: set[str] = set()
            self.duplicates: list[_Duplicate] = []

        def compose_node(self, parent, index):
            event = self.peek_event()
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in self.open_anchors:
                    raise SelfAlias(None, None, f"the alias *{event.anchor} refers to the node that holds it "
                                                    "(a value cannot contain itself)", event.start_mark)
                return super().compose_node(parent, index)
            anchor = getattr(event, "anchor", None)
            if anchor is None:
                return super().compose_node(parent, index)
            self.open_anchors.add(anchor)
            try:
                return super().compose_node(parent, index)
            finally:
                self.open_anchors.discard(anchor)

        def compose_mapping_node(self, anchor):
            node = super().compose_mapping_node(anchor)
            seen: dict[tuple, Any] = {}
            for key, _ in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == MERGE_TAG:
                    continue
                ident = (key.tag, key.value)
                if ident in seen:
                    first = seen[ident].start_mark
                    self.duplicates.append(_Duplicate(key.value, (first.line + 1, first.column + 1),
                                                      (key.start_mark.line + 1, key.start_mark.column + 1)))
                else:
                    seen[ident] = key
            return node

    return StrictLoader


def _yaml_error(path: Path, exc: Exception, text: str = "") -> ConfigError:
    position = getattr(exc, "position", None)
    if isinstance(position, int) and getattr(exc, "reason", None):  # PyYAML's ReaderError: a character
        line = text[:position].count("\n") + 1
        column = position - (text.rfind("\n", 0, position) + 1) + 1
        return ConfigError(f"{path}:{line}:{column}: {exc.reason} (character #x{exc.character:04x})"
                           if isinstance(exc.character, int) else f"{path}:{line}:{column}: {exc.reason}",
                           "remove the character, or write it as an escape in a double-quoted string (\"\\x01\")")
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if mark is not None and problem:
        context = getattr(exc, "context", None)
        context_mark = getattr(exc, "context_mark", None)
        if context:  # PyYAML's wording: "while parsing a flow sequence" ... "expected ',' or ']', but got ..."
            where = f" on line {context_mark.line + 1}" if context_mark is not None else ""
            problem = f"{context}{where}, {problem}"
        remedy = SELF_ALIAS_REMEDY if type(exc).__name__ == "SelfAlias" else SYNTAX_REMEDY
        return ConfigError(f"{path}:{mark.line + 1}:{mark.column + 1}: {problem}", remedy)
    text = " ".join(str(exc).split()).replace('in "<unicode string>", ', "").replace('"<unicode string>"', str(path))
    return ConfigError(f"cannot parse {path}: {text}", SYNTAX_REMEDY)


def _too_deep(path: Path) -> ConfigError:
    return ConfigError(f"{path} is nested too deeply to be a config", "write the config with a few levels of nesting")


def _compose(path: Path, text: str):
    """The composed YAML node graph of ``text`` (``None`` for an empty document) and the repeated keys."""
    import yaml

    try:
        loader = _make_loader()(text)  # the reader refuses control characters here
        return loader, loader.get_single_node(), loader.duplicates
    except RecursionError:
        raise _too_deep(path) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc, text) from None


def _children(node) -> list:
    import yaml

    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_size(path: Path, root) -> None:
    """Refuse a node graph that expands to more than :data:`MAX_VALUES` values (iteratively, as
    shared nodes are counted once per reference; the graph has no cycles)."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in sizes:
            continue
        kids = _children(node)
        if not done:
            stack.append((node, True))
            stack.extend((k, False) for k in kids if id(k) not in sizes)
            continue
        sizes[id(node)] = 1 + sum(sizes[id(k)] for k in kids)
        if sizes[id(node)] > MAX_VALUES:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: its aliases expand to more than {MAX_VALUES} values",
                              "write the values out, or use fewer nested aliases")


def _lines(root) -> dict[Loc, int]:
    """1-based line of every key and list item, by location (each alias walked where it is used;
    the keys a ``<<`` merge key brings in are located in the mapping they are merged from, unless
    the mapping gives them itself). Call before the document is constructed (construction
    rewrites merge keys in place)."""
    import yaml

    lines: dict[Loc, int] = {}
    stack = [(root, ())]
    while stack:
        node, loc = stack.pop()
        if isinstance(node, yaml.MappingNode):
            taken: set = set()
            merged: list = []
            for key, value in node.value:
                if key.tag == MERGE_TAG:
                    merged.extend(value.value if isinstance(value, yaml.SequenceNode) else [value])
                    continue
                taken.add(key.value)
                lines[(*loc, key.value)] = key.start_mark.line + 1
                stack.append((value, (*loc, key.value)))
            for source in merged:
                for key, value in source.value if isinstance(source, yaml.MappingNode) else []:
                    if key.tag != MERGE_TAG and key.value not in taken:
                        taken.add(key.value)
                        lines[(*loc, key.value)] = key.start_mark.line + 1
                        stack.append((value, (*loc, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*loc, i)] = item.start_mark.line + 1
                stack.append((item, (*loc, i)))
    return lines


def _duplicate_error(path: Path, dups: list[_Duplicate]) -> ConfigError:
    def at(pos):
        return f"line {pos[0]}" if pos else "?"

    def one(d: _Duplicate) -> str:
        if d.first and d.second:
            same_line = d.first[0] == d.second[0]
            where = (f"{path}:{d.second[0]}:{d.second[1]}: key {d.key!r} repeats the one at column {d.first[1]}"
                     if same_line else f"{path}:{d.second[0]}: key {d.key!r} repeats the one on line {d.first[0]}")
            return where
        return f"{path}: key {d.key!r} is given twice in one mapping"

    remedy = "keep one of them (a repeated key would silently override the first)"
    if len(dups) == 1:
        return ConfigError(one(dups[0]), remedy)
    return ConfigError(f"{len(dups)} repeated keys in {path}:\n    " + "\n    ".join(one(d) for d in dups[:50]), remedy)


def _parse_json(path: Path, text: str) -> Any:
    def pairs(items):
        out = {}
        for key, value in items:
            if key in out:
                raise _Duplicate(key, None, None)
            out[key] = value
        return out

    try:
        return json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}: {exc.msg}", "fix the JSON syntax at the place named") \
            from None
    except RecursionError:
        raise _too_deep(path) from None
    except _Duplicate as dup:
        try:  # YAML reads most JSON, with positions
            _, _, dups = _compose(path, _json_as_yaml(text))
        except ConfigError:
            dups = []
        raise _duplicate_error(path, dups or [dup]) from None


def _json_as_yaml(text: str) -> str:
    """JSON text that PyYAML composes with the same lines and columns: a tab, which YAML refuses
    as indentation, is whitespace to JSON and cannot occur raw inside a JSON string."""
    return text.replace("\t", " ")


def parse_config_text(path: str | Path, text: str) -> tuple[Any, dict[Loc, int]]:
    """The data of a config file and the line of each key (``{location: line}``, 1-based; empty
    when a JSON file is no YAML PyYAML reads).

    ``path`` names the file in messages; ``.json`` is read as JSON, anything else as YAML.

    Raises:
        ConfigError: a syntax error (``FILE:LINE:COLUMN: what``), a repeated key (both lines), a
            self-referring alias, aliases expanding to more than :data:`MAX_VALUES` values, or
            nesting deeper than the interpreter follows.
    """
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = _parse_json(path, text)
        try:
            _, root, _ = _compose(path, _json_as_yaml(text))
            lines = _lines(root) if root is not None else {}
        except ConfigError:  # JSON that YAML 1.1 does not read (tabs...): no line numbers
            lines = {}
        return data, lines
    loader, root, dups = _compose(path, text)
    if dups:
        raise _duplicate_error(path, dups)
    if root is None:
        return None, {}
    _check_size(path, root)
    lines = _lines(root)
    import yaml

    try:
        data = loader.construct_document(root)
    except RecursionError:
        raise _too_deep(path) from None
    except yaml.YAMLError as exc:
        raise _yaml_error(path, exc) from None
    finally:
        loader.dispose()
    return data, lines
