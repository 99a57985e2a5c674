"""Load a policy file: YAML -> `PolicyFile` -> compiled `Policy`. Errors name the file, line, key path and fix."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import types
import typing
from importlib import resources
from pathlib import Path

import yaml
from pydantic import BaseModel, ValidationError

from engramma.errors import EngrammaError
from engramma.policies.engine import Policy
from engramma.policies.schema import PolicyFile

PRESETS = ("default", "assistant-private", "index-only")
log = logging.getLogger("engramma")


class PolicyError(EngrammaError, ValueError):
    """A policy file that cannot be used; the message says where and how to fix it."""


def _is_inline(origin: str) -> bool:
    """An origin in angle brackets (`<policy>`, `<policy HASH>`) names no file: the policy was given as text."""
    return origin.startswith("<")


class LivePolicy:
    """A policy a long-running process keeps in force: re-read when its file changes (a stat per call);
    a broken edit is refused, logged and kept in `error`, and the previous policy stays in force.

    An inline origin has no file to re-read: its policy is `last_good`, the text the store kept."""

    def __init__(self, origin: str, policy: Policy | None = None, *, last_good: str | None = None):
        """`last_good`: the YAML this origin had when it last decided; used if the file is broken now."""
        self.origin = origin
        self.error: str | None = None
        self._signature = self._stat()
        if policy is None and _is_inline(origin):
            if last_good is None:
                raise PolicyError(f"{origin}: this store's policy was given as a loaded Policy, and its text was "
                                  "never kept because nothing was observed under it; open the store with policy= "
                                  "a file, a preset or that Policy again")
            policy = parse_policy(last_good, origin)
        elif policy is None:
            try:
                policy = load_policy(origin)
            except PolicyError as e:
                if last_good is None:
                    raise
                policy = parse_policy(last_good, origin)
                self.error = str(e)
                log.error("engramma: policy %s is broken, its last good version stays in force: %s", origin, e)
        self._policy = policy

    @classmethod
    def fixed(cls, policy: Policy) -> LivePolicy:
        """A loaded `Policy`. Its origin is what a store records and reopens, so it must name where the policy
        can be found again: a preset, the absolute path of the file it was read from (then edits are followed),
        or else `<policy HASH>`, which a store resolves to the text it kept (`parse_policy(text)` names no file;
        its label, such as `README.md`, may name an unrelated one)."""
        if policy.origin.startswith("preset:"):
            return cls(f"preset:{policy.name}", policy)
        path = Path(policy.origin)
        try:
            from_file = not _is_inline(policy.origin) and path.is_file() and hashlib.sha256(
                path.read_text(encoding="utf-8").encode()).hexdigest()[:16] == policy.content_hash
        except (OSError, UnicodeDecodeError):
            from_file = False
        origin = str(path.resolve()) if from_file else f"<policy {policy.content_hash}>"
        return cls(origin, dataclasses.replace(policy, origin=origin))

    def _stat(self) -> tuple[int, int] | None:
        if self.origin.startswith("preset:") or _is_inline(self.origin):
            return None
        try:
            st = os.stat(self.origin)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self) -> Policy:
        signature = self._stat()
        if signature != self._signature:
            self._signature = signature
            try:
                self._policy = load_policy(self.origin)
                self.error = None
                log.info("engramma: reloaded policy %s (%s)", self.origin, self._policy.content_hash)
            except PolicyError as e:
                self.error = str(e)
                log.error("engramma: policy edit refused, %s stays in force: %s", self._policy.name, e)
        return self._policy


def load_policy(source: str | Path) -> Policy:
    """A policy from a YAML file path, or `preset:NAME` for a shipped preset."""
    if isinstance(source, str) and source.startswith("preset:"):
        name = source.removeprefix("preset:")
        if name not in PRESETS:
            raise PolicyError(f"{source}: no such preset; the presets are {', '.join(PRESETS)}")
        text = resources.files("engramma.policies").joinpath("presets", f"{name}.yaml").read_text()
        return parse_policy(text, source)
    path = Path(source)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{path}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"{path}: cannot read the policy file ({e})") from None
    return parse_policy(text, str(path))


class _DuplicateKey(yaml.YAMLError):
    def __init__(self, loc: tuple[str | int, ...], key: yaml.Node, first: yaml.Node):
        super().__init__(f"{_key_path(loc)} is given twice")
        self.loc, self.line, self.first_line = loc, key.start_mark.line + 1, first.start_mark.line + 1


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping, where PyYAML silently keeps the last value
    (`default: index` then `default: drop` would route everything to drop)."""

    def compose_document(self) -> yaml.Node:
        root = super().compose_document()
        _refuse_duplicate_keys(root, (), set())
        return root


def _refuse_duplicate_keys(node: yaml.Node, loc: tuple[str | int, ...], seen: set[int]) -> None:
    if id(node) in seen:  # an alias (`*name`) repeats a node already checked, and may even contain itself
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first: dict[tuple[str, str], yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            if (key.tag, key.value) in first:
                raise _DuplicateKey((*loc, key.value), key, first[key.tag, key.value])
            first[key.tag, key.value] = key
            _refuse_duplicate_keys(value, (*loc, key.value), seen)
    elif isinstance(node, yaml.SequenceNode):
        for n, value in enumerate(node.value):
            _refuse_duplicate_keys(value, (*loc, n), seen)


def parse_policy(text: str, origin: str = "<policy>") -> Policy:
    """A policy from YAML text; `origin` names it in error messages (a file path, `preset:NAME`, a label)."""
    loader = _StrictLoader(text)
    try:
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except _DuplicateKey as e:
        raise PolicyError(f"{origin}:{e.line}: {_key_path(e.loc)}: given twice (first on line {e.first_line}); "
                          "keep one") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise PolicyError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
    finally:
        loader.dispose()
    if not isinstance(data, dict):
        raise PolicyError(f"{origin}:1: a policy is a YAML mapping with version, name, rules and default")
    try:
        spec = PolicyFile.model_validate(data)
    except ValidationError as e:
        raise PolicyError("\n".join(_describe(err, root, origin) for err in _first_per_path(e.errors()))) from None
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Policy.compile(spec, origin=origin, text=text, content_hash=digest)


def _first_per_path(errors: list[dict]) -> list[dict]:
    """A union field (`pii_none: bool | list`) fails once per member; keep one error per real key path."""
    out, seen = [], set()
    for err in errors:
        path = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p in ("bool", "str", "int", "float"))))
        if path not in seen:
            seen.add(path)
            out.append({**err, "loc": path})
    # `pii_none: [emial]` fails as a bool at pii_none and as a list at pii_none[0]: keep the deeper one.
    deeper = [e for e in out if not any(o["loc"][:len(e["loc"])] == e["loc"] and o is not e for o in out)]
    return deeper[:8]


def _describe(err: dict, root, origin: str) -> str:
    loc = err["loc"]
    node = _node_at(root, loc)
    line = node.start_mark.line + 1 if node is not None else 1
    path = _key_path(loc)
    given = err.get("input")
    kind = err["type"]
    if kind == "extra_forbidden":
        accepted = _fields_at(loc[:-1])
        message = f"unknown key; accepted keys are {', '.join(accepted)}" if accepted else "unknown key"
    elif kind in ("enum", "literal_error"):
        expected = err.get("ctx", {}).get("expected", "").replace("'", "")
        message = f"{given!r} is not one of {expected}"
    elif kind == "missing":
        message = "required key is missing"
    else:
        message = err["msg"].removeprefix("Value error, ")
        if given is not None and not isinstance(given, (dict, list)) and repr(given) not in message:
            message += f" (got {given!r})"
    return f"{origin}:{line}: {path or '(top level)'}: {message}"


def _key_path(loc) -> str:
    """('rules', 2, 'when', 'kind') -> 'rules[2].when.kind'."""
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))


def _node_at(root, loc):
    """The YAML node at a key path, or the deepest ancestor found (for the line number)."""
    node = root
    for part in loc:
        if isinstance(node, yaml.MappingNode) and isinstance(part, str):
            for key, value in node.value:
                if key.value == part:
                    # for an unknown key point at the key itself; otherwise at its value
                    node = value if part != loc[-1] else key
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _fields_at(loc) -> list[str]:
    """Field names of the model found at a key path of PolicyFile."""
    annotation: object = PolicyFile
    for part in loc:
        annotation = _unwrap(annotation, list_item=isinstance(part, int))
        if isinstance(part, str):
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)) or part not in annotation.model_fields:
                return []
            annotation = annotation.model_fields[part].annotation
    annotation = _unwrap(annotation, list_item=False)
    return list(annotation.model_fields) if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def _unwrap(annotation, *, list_item: bool):
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        models = [m for m in members if isinstance(m, type) and issubclass(m, BaseModel)]
        lists = [m for m in members if typing.get_origin(m) is list]
        annotation = models[0] if models and not list_item else (lists[0] if lists else members[0])
        origin = typing.get_origin(annotation)
    if list_item and origin is list:
        return typing.get_args(annotation)[0]
    return annotation
