"""Models as code: read model files, validate them, and plan what makes the server match them.

A file set is YAML or JSON files (a directory: its ``*.yaml``, ``*.yml`` and ``*.json``), each
holding one or many documents; a document is a ``POST /v1/models`` body, or a list of them.
The name is a model's identity. Every document is validated with the API's own schema
(:class:`~api.schemas.ModelCreate`) before anything is asked of the server, so a bad set
changes nothing. :func:`plan` compares the set with the server: a model to create, the
fields to update (with the ``resource_version`` they were read at, for ``If-Match``), nothing
for an equal one, and with a selector the managed models the set no longer lists (prune).
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from api.client import AifClient, Model
from api.errors import describe_validation_errors
from api.schemas import ModelCreate

MODEL_FILE_SUFFIXES = (".yaml", ".yml", ".json")


class FileSetError(Exception):
    """A file set that cannot be applied; the message names the file and the field."""


@dataclass(frozen=True)
class Document:
    source: str  # "path" or "path#n" for the n-th document of a multi-document file
    body: dict[str, Any]  # the spec as the API takes it, labels and defaults included


@dataclass
class Action:
    kind: str  # create, update, unchanged, delete
    name: str
    body: dict[str, Any] = field(default_factory=dict)  # create: the body; update: the fields
    current: dict[str, Any] = field(default_factory=dict)  # the server's spec
    wanted: dict[str, Any] = field(default_factory=dict)  # the file's spec
    resource_version: str | None = None

    def unified_diff(self) -> str:
        """This action as a unified diff of the spec, server before, file after."""
        before = _as_yaml(self.current) if self.current else []
        after = _as_yaml(self.wanted) if self.wanted else []
        lines = difflib.unified_diff(
            before, after, fromfile=f"server/{self.name}", tofile=f"file/{self.name}"
        )
        return "".join(lines)


def _as_yaml(spec: dict[str, Any]) -> list[str]:
    text: str = yaml.safe_dump(spec, sort_keys=True, default_flow_style=False)
    return text.splitlines(keepends=True)


def _files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in MODEL_FILE_SUFFIXES))
        elif path.exists():
            found.append(path)
        else:
            raise FileSetError(f"{path}: no such file or directory")
    if not found:
        raise FileSetError(f"no model files ({', '.join(MODEL_FILE_SUFFIXES)}) in {paths[0]}")
    return found


def _parse(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise FileSetError(f"{path}: cannot read: {exc}") from exc
    try:
        if path.suffix == ".json":
            return [json.loads(text)]
        return [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except json.JSONDecodeError as exc:
        raise FileSetError(f"{path}: not JSON: {exc}") from exc
    except yaml.YAMLError as exc:
        raise FileSetError(f"{path}: not YAML: {exc}".replace("\n", " ")) from exc


def load(paths: list[Path], selector: dict[str, str]) -> list[Document]:
    """Every model document of ``paths``, validated, with ``selector``'s labels added."""
    documents: list[Document] = []
    seen: dict[str, str] = {}
    for path in _files(paths):
        parsed = _parse(path)
        items = [item for doc in parsed for item in (doc if isinstance(doc, list) else [doc])]
        for index, item in enumerate(items, start=1):
            source = str(path) if len(items) == 1 else f"{path}#{index}"
            body = _validated(source, item, selector)
            if body["name"] in seen:
                raise FileSetError(
                    f"{source}: name: {body['name']!r} is also defined in {seen[body['name']]}"
                )
            seen[body["name"]] = source
            documents.append(Document(source, body))
    return documents


def _validated(source: str, item: Any, selector: dict[str, str]) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise FileSetError(
            f"{source}: a model document must be a mapping, not {type(item).__name__}"
        )
    try:
        model = ModelCreate.model_validate(item)
    except ValidationError as exc:
        message, _ = describe_validation_errors(list(exc.errors()))
        name = f" ({item['name']})" if isinstance(item.get("name"), str) else ""
        raise FileSetError(f"{source}{name}: {message}") from exc
    for key, value in selector.items():
        if model.labels.get(key, value) != value:
            raise FileSetError(
                f"{source} ({model.name}): labels.{key}: {model.labels[key]!r} contradicts "
                f"the selector {key}={value}"
            )
    body = model.model_dump(mode="json", exclude={"routing_policy"})
    if model.routing_policy is not None:
        body["routing_policy"] = model.routing_policy
    body["labels"] = {**model.labels, **selector}
    return body


def spec_of(model: Model, fields: set[str]) -> dict[str, Any]:
    """The server's model as a file would write it: the ``fields`` a document sets."""
    return {name: model[name] for name in sorted(fields) if name in model}


def plan(client: AifClient, documents: list[Document], selector: dict[str, str]) -> list[Action]:
    """What makes the server match ``documents``; with ``selector``, prunes too."""
    actions: list[Action] = []
    for doc in documents:
        name = doc.body["name"]
        current = client.find(name)
        if current is None:
            actions.append(Action("create", name, body=doc.body, wanted=doc.body))
            continue
        have = spec_of(current, set(doc.body))
        changed = {k: v for k, v in doc.body.items() if have.get(k) != v}
        actions.append(
            Action(
                "update" if changed else "unchanged",
                name,
                body=changed,
                current=have,
                wanted=dict(sorted(doc.body.items())),
                resource_version=current["resource_version"],
            )
        )
    if selector:
        listed = {doc.body["name"] for doc in documents}
        fields = set(ModelCreate.model_fields)
        for model in client.list(selector):
            if model["name"] not in listed and model["status"] != "DELETING":
                actions.append(
                    Action(
                        "delete",
                        model["name"],
                        current=spec_of(model, fields),
                        resource_version=model["resource_version"],
                    )
                )
    return actions


def parse_selector(items: list[str]) -> dict[str, str]:
    """``["team=search"]`` as labels; malformed ones raise FileSetError."""
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FileSetError(f"--selector: {item!r} is not key=value")
        labels[key] = value
    return labels
