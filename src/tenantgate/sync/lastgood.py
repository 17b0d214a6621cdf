"""The last-known-good copy of the registry on disk, for a cold start while the registry is unreachable.

It holds the whole registry state (every field of every record: documents, states, wrapped keys but never
plaintext, key version floors) and the identity of the registry it came from, written to a temporary file
and renamed, so a reader sees the old file or the new one, never half of one.

Its content is encoded by ``registry/statefile.py``, which refuses a file that lacks a field, names one this
version does not know, or is of an older format; the server then waits for the registry.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from tenantgate.errors import StorageError
from tenantgate.registry.records import RegistryState
from tenantgate.registry.statefile import OLDEST_FORMAT, decode, encode


def save(path: Path, state: RegistryState, saved_at: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(encode(state, saved_at), handle, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def load(path: Path) -> tuple[RegistryState, float]:
    """The saved state and when it was saved; StorageError when there is none to use."""
    try:
        return decode(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise StorageError(f"cannot use the last-known-good snapshot {path}: {exc}") from None


@dataclasses.dataclass(frozen=True)
class Held:
    """What a last-known-good file holds, as far as replacing it goes."""

    registry_id: str = ""
    revision: int = 0
    # Written by an older tenantgate: of no use to this one, and replaced by it.
    outdated: bool = False
    # Why this version cannot read it, when it cannot (a newer format, a damaged file): kept unless told.
    unreadable: str = ""


def identify(path: Path) -> Held | None:
    """What the file at ``path`` holds; None when there is no file (blocking: reads the whole file)."""
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return Held(unreadable=str(exc))
    found = body.get("format") if isinstance(body, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and found < OLDEST_FORMAT:
        return Held(outdated=True)
    try:
        state, _ = decode(body)
    except ValueError as exc:
        return Held(unreadable=str(exc))
    return Held(state.registry_id, state.revision)


@dataclasses.dataclass(frozen=True)
class Refusal:
    """Why a file must not be replaced by a state, and what an operator can do about it."""

    reason: str
    advice: str


def refusal(held: Held | None, state: RegistryState) -> Refusal | None:
    """Why ``state`` must not replace a file that holds ``held``; None when it may: no file, a file of an older
    format, or one of the same registry at the same or an earlier revision."""
    if held is None or held.outdated:
        return None
    if held.unreadable:
        return Refusal(f"this tenantgate cannot read it ({held.unreadable})",
                       "Remove it, or start once with --replace-snapshot-file, to let this server write it.")
    if held.registry_id != state.registry_id:
        return Refusal(f"it holds registry {held.registry_id} at revision {held.revision}, and this server follows "
                       f"another registry, {state.registry_id} (at revision {state.revision})",
                       f"A cold start meanwhile serves registry {held.registry_id}. If registry {state.registry_id} "
                       "replaces it for good, remove the file or start once with --replace-snapshot-file.")
    if state.revision < held.revision:
        return Refusal(f"registry {state.registry_id} is at revision {state.revision}, behind the file's revision "
                       f"{held.revision}: was it restored from a backup?",
                       f"A cold start meanwhile serves revision {held.revision}. If the registry is meant to be at "
                       f"revision {state.revision}, remove the file or start once with --replace-snapshot-file (the "
                       f"file is replaced by itself once the registry passes revision {held.revision}); if not, "
                       "restore a later backup of the registry.")
    return None
