"""Projects and their label classes."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from store import audit
from store.errors import Conflict, InvalidInput, NotFound
from store.models import Project

DEFAULT_COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#46f0f0", "#f032e6"]


@dataclass(frozen=True)
class ProjectSpec:
    """A project not created yet: an import creates it with its first series that lands, so
    an import in which nothing lands leaves no empty project behind."""

    name: str
    modality: str
    label_classes: list[dict] = field(default_factory=list)


def parse_classes(spec: str) -> list[dict]:
    """Parse 'lesion:1,oedema:2' (colours optional: 'lesion:1:#ff0000') into label classes."""
    classes = []
    for i, part in enumerate(p.strip() for p in spec.split(",") if p.strip()):
        bits = part.split(":")
        if len(bits) < 2 or not bits[1].strip().isdigit():
            raise InvalidInput(
                f"label class {part!r} is not name:value (e.g. 'lesion:1'): fix --classes"
            )
        colour = bits[2] if len(bits) > 2 else DEFAULT_COLOURS[i % len(DEFAULT_COLOURS)]
        classes.append({"name": bits[0].strip(), "value": int(bits[1]), "color": colour})
    validate_classes(classes)
    return classes


def validate_classes(classes: list[dict]) -> None:
    values = [c["value"] for c in classes]
    if not classes:
        raise InvalidInput("a project needs at least one label class, e.g. 'lesion:1'")
    if any(v <= 0 or v > 255 for v in values) or len(set(values)) != len(values):
        raise InvalidInput("label class values must be distinct integers from 1 to 255 "
                           "(0 is background)")
    for c in classes:
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", c.get("color", "")):
            raise InvalidInput(f"colour of class {c['name']!r} must look like '#ff0000'")


def check_new_project(session: Session, name: str, label_classes: list[dict]) -> None:
    """Raise what create_project would raise for this name and these classes, writing nothing."""
    if not name.strip():
        raise InvalidInput("a project needs a name")
    if session.exec(select(Project).where(Project.name == name)).first():
        raise Conflict(f"a project named {name!r} exists already")
    validate_classes(label_classes)


def create_project(
    session: Session, name: str, modality: str, label_classes: list[dict], actor: str
) -> Project:
    check_new_project(session, name, label_classes)
    project = Project(name=name, modality=modality.upper(), label_classes=label_classes)
    session.add(project)
    try:
        session.flush()
    except IntegrityError:
        # PostgreSQL: another transaction created the same name after our check above.
        raise Conflict(f"a project named {name!r} was created at the same moment by someone "
                       "else: use that project, or choose another name") from None
    audit.record(session, actor, "project.create", "project", project.id, name=name,
                 modality=project.modality, classes=[c["name"] for c in label_classes])
    return project


def get_project(session: Session, name: str) -> Project:
    project = session.exec(select(Project).where(Project.name == name)).first()
    if project is None:
        raise NotFound(f"no project named {name!r}: create it with --classes, "
                       "or list projects with `medloop projects`")
    return project
