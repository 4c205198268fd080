"""The one way a worker names a file it writes: ``inside(root, ...)``.

Every path a worker creates (the download, the extracted archive, the canonical shards,
predictions, the cache) is built here from its directory (the attempt's work directory or
the cache directory) and relative parts, some of them taken from user data (split names,
archive members, object names listed under a prefix). The parts are checked one component
at a time and the result is resolved, symbolic links included, so a path that would land
outside ``root`` is refused whatever produced it. User names are checked against their own
rules first (``shared.entities.check_split_name``…) so that the user hears a precise
reason; this is the backstop under all of them.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from workers.failures import FailureReason, WorkerFailure

MAX_DEPTH = 32  # components below root: deep enough for any layout, far from recursion limits
MAX_COMPONENT_BYTES = 255  # NAME_MAX on Linux filesystems


def inside(root: str | Path, *parts: str | PurePosixPath) -> Path:
    """``root`` joined with ``parts`` (each may hold '/'-separated components).

    Raises:
        WorkerFailure: ``unsafe_path`` for an empty, '.', '..', absolute, over-long or
            backslash/NUL-bearing component, more than ``MAX_DEPTH`` components, or a
            result that resolves outside ``root``.
    """
    root = Path(root)
    components: list[str] = []
    for part in parts:
        text = part.as_posix() if isinstance(part, PurePosixPath) else part
        if not isinstance(text, str) or text.startswith("/"):
            raise _refused(part, "an absolute path")
        for component in text.split("/"):
            if component in ("", ".", ".."):
                raise _refused(part, f"the component {component!r}")
            if "\\" in component or "\x00" in component:
                raise _refused(part, "a backslash or NUL")
            if len(component.encode("utf-8", "surrogateescape")) > MAX_COMPONENT_BYTES:
                raise _refused(part, f"a component longer than {MAX_COMPONENT_BYTES} bytes")
            components.append(component)
    if len(components) > MAX_DEPTH:
        raise _refused("/".join(components)[:200], f"more than {MAX_DEPTH} levels")
    path = root.joinpath(*components)
    if not path.resolve().is_relative_to(root.resolve()):
        raise _refused("/".join(components), f"a path that resolves outside {root}")
    return path


def _refused(part: object, what: str) -> WorkerFailure:
    shown = str(part)
    shown = shown if len(shown) <= 120 else shown[:120] + "…"
    return WorkerFailure(FailureReason.unsafe_path, f"refused to write {shown!r}: {what}")
