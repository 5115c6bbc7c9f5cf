"""YAML loading that remembers where each value came from, so catalog errors can name the line.

Called by schema.py. PyYAML's SafeLoader composes a node tree (every node carries its start mark);
this module turns it into plain Python values plus a `path -> line` map, using SafeLoader's own
constructors for scalars so that `true`, `1e3` and `null` mean what they mean in `yaml.safe_load`.
Merge keys (`<<: *defaults`) are flattened as PyYAML does. A key given twice in one mapping, which
`yaml.safe_load` would silently resolve to the last value, is reported instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

# A catalog of a thousand models with every key set is ~30,000 values; nested aliases can make a
# few lines expand to billions, which would take the whole machine's memory.
MAX_NODES = 100_000

Path_ = tuple[str | int, ...]  # ("models", 2, "task")


@dataclass
class LocatedDocument:
    """A YAML document's value with the 1-based line of every mapping key and sequence item."""

    value: Any
    lines: dict[Path_, int] = field(default_factory=dict)
    duplicate_keys: list[tuple[Path_, int, int]] = field(default_factory=list)  # path, first, again
    nodes: int = 0  # values converted so far (aliases count each time they expand)

    def line_of(self, path: Path_) -> int | None:
        """The line of `path`, or of its closest located ancestor."""
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return self.lines.get(())


class YamlSyntaxError(ValueError):
    """The text is not YAML; `line` is 1-based (None when PyYAML gave no position)."""

    def __init__(self, message: str, line: int | None) -> None:
        super().__init__(message)
        self.line = line


def load_located(text: str) -> LocatedDocument:
    """Parse one YAML document. An empty document gives `value=None`. Aliases and merge keys
    work, but the expanded document is bounded (MAX_NODES): a few lines of nested aliases would
    otherwise expand to billions of values."""
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        document = LocatedDocument(value=None)
        if root is not None:
            document.lines[()] = root.start_mark.line + 1
            document.value = _convert(loader, root, (), document)
        return document
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise YamlSyntaxError(f"not valid YAML: {problem or exc}", line) from exc
    except yaml.YAMLError as exc:
        raise YamlSyntaxError(f"not valid YAML: {exc}", None) from exc
    finally:
        loader.dispose()


def _convert(loader: yaml.SafeLoader, node: yaml.Node, path: Path_, doc: LocatedDocument) -> Any:
    doc.nodes += 1
    if doc.nodes > MAX_NODES:
        raise YamlSyntaxError(
            f"the document expands to more than {MAX_NODES} values (nested aliases?): write the "
            "values out, or put shared keys under `defaults:`",
            node.start_mark.line + 1,
        )
    if isinstance(node, yaml.MappingNode):
        loader.flatten_mapping(node)  # resolves `<<` merge keys in place
        result: dict[Any, Any] = {}
        first_line: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, str | int | float | bool) and key is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, "a mapping key must be a plain value", key_node.start_mark
                )
            line = key_node.start_mark.line + 1
            if key in first_line:
                doc.duplicate_keys.append(((*path, key), first_line[key], line))
            first_line[key] = line
            doc.lines[(*path, key)] = line
            result[key] = _convert(loader, value_node, (*path, key), doc)
        return result
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item_node in enumerate(node.value):
            doc.lines[(*path, index)] = item_node.start_mark.line + 1
            items.append(_convert(loader, item_node, (*path, index), doc))
        return items
    return loader.construct_object(node, deep=True)
