"""Reading YAML configs safely: YAML 1.2 scalars, no code, no alias bombs, no duplicate keys.

`ConfigLoader` is a `yaml.SafeLoader` (no `!!python/object`) with more guards, each failing
fast as a one-line YAML error with its line and column:

- Aliases may expand the document by at most `MAX_ALIAS_NODES` nodes in all. A "billion
  laughs" file of a few hundred bytes would otherwise expand to 10^9 values; the expansion is
  counted while composing, before anything is built, so the check costs the file's size.
  A recursive alias (`&a [*a]`) is refused too.
- Nesting is at most `MAX_DEPTH` levels (PyYAML composes recursively: deeper input would end
  in a RecursionError); an integer of more than 4300 digits is an error, not a ValueError.
- A key given twice in one mapping is an error (PyYAML silently keeps the last one, so a
  repeated `learning_rate:` would hide which value trains). `<<` merge keys may still be
  overridden, as YAML intends.

`read_yaml` adds the file checks: at most `MAX_FILE_BYTES`, UTF-8 text.

YAML 1.2 scalars: `off`/`yes`/`no` stay strings (so `amp: off` works) and `3e-5` is a float,
where PyYAML's YAML 1.1 defaults would give `False` and the string '3e-5'.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from avakit.errors import AvakitError

MAX_ALIAS_NODES = 10_000  # nodes added by aliases in one document (a full config has ~100 nodes)
MAX_DEPTH = 64  # nesting levels (a config has 4)
MAX_FILE_BYTES = 16 << 20  # a config is a few KB; even a list of 10^4 shard URLs fits in 16 MiB
_MERGE = "tag:yaml.org,2002:merge"


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans/floats, an alias expansion budget, a depth limit and
    duplicate keys refused."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> expanded node count, once composed
        self._alias_nodes = 0
        self._depth = 0

    def compose_document(self) -> Any:
        """Compose one document, then forget the node sizes counted for it."""
        node = super().compose_document()
        self._sizes.clear()
        return node

    def compose_node(self, parent: Any, index: Any) -> Any:
        """Compose a node, refusing a recursive alias, an alias expansion over budget and deep nesting."""
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            node = super().compose_node(parent, index)
            if id(node) not in self._sizes:
                raise ComposerError(None, None, f"recursive YAML alias *{event.anchor}", event.start_mark)
            self._alias_nodes += self._sizes[id(node)]
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise ComposerError(
                    None,
                    None,
                    f"too many YAML aliases (they expand to more than {MAX_ALIAS_NODES:,} values)",
                    event.start_mark,
                )
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ComposerError(
                None, None, f"nested more than {MAX_DEPTH} levels deep", self.peek_event().start_mark
            )
        node = super().compose_node(parent, index)
        self._depth -= 1
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        self._sizes[id(node)] = 1 + sum(self._sizes[id(c)] for c in children)
        return node

    def construct_yaml_int(self, node: Any) -> int:
        """Construct an int; one too long for Python to parse is a ConstructorError."""
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses to parse integers of more than 4300 digits
            raise ConstructorError(
                None, None, f"integer of {len(node.value):,} digits is too long", node.start_mark
            ) from None

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """Construct a mapping, refusing a duplicate key (merge keys `<<` aside)."""
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key_node, _ in node.value:
                if key_node.tag == _MERGE or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise ConstructorError(
                        "while constructing a mapping",
                        node.start_mark,
                        f"duplicate key {key!r}",
                        key_node.start_mark,
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


_BOOL, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
ConfigLoader.add_constructor("tag:yaml.org,2002:int", ConfigLoader.construct_yaml_int)
ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
ConfigLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
        r"|[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def yaml_problem(exc: yaml.YAMLError) -> str:
    """One line for a YAML error: where (line, column) and what."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    return f"invalid YAML{where}: {problem}"


def parse_yaml(text: str) -> Any:
    """Parse one YAML document with `ConfigLoader` (raises yaml.YAMLError)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 - ConfigLoader is a SafeLoader


def read_yaml(path: Path, what: str = "config") -> Any:
    """Read and parse a YAML file; AvakitError naming `what` and the file for any problem."""
    path = Path(path)
    if not path.is_file():
        raise AvakitError(f"{what} file not found: {path}")
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise AvakitError(
                f"{what} {path}: {size / 2**20:.0f} MiB is too large for a {what} file "
                f"(at most {MAX_FILE_BYTES >> 20} MiB)"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise AvakitError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise AvakitError(
            f"{what} {path}: not UTF-8 text (byte 0x{data[exc.start]:02x} on line {line}); save it as UTF-8"
        ) from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise AvakitError(f"{what} {path}: {yaml_problem(exc)}") from None
