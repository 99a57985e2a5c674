"""Load a policy file: YAML -> `PolicyFile` -> compiled `Policy`. Errors name the file, line, key path and fix."""
from __future__ import annotations

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


class LivePolicy:
    """A policy a long-running process keeps in force: re-read when its file changes (a stat per call);
    a broken edit is refused, logged and kept in `error`, and the previous policy stays in force."""

    def __init__(self, origin: str, policy: Policy | None = None, *, last_good: str | None = None):
        """`last_good`: the YAML this origin had when it last decided; used if the file is broken now."""
        self.origin = origin
        self.error: str | None = None
        self._signature = self._stat()
        if policy is None:
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
        return cls(f"preset:{policy.name}" if policy.origin.startswith("preset:") else policy.origin, policy)

    def _stat(self) -> tuple[int, int] | None:
        if self.origin.startswith("preset:"):
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


def parse_policy(text: str, origin: str = "<policy>") -> Policy:
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark else origin
        raise PolicyError(f"{where}: not valid YAML ({getattr(e, 'problem', None) or e})") from None
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
    path = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else str(p)) for i, p in enumerate(loc))
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
