"""Unpacking a model archive (a job's ``model.tar.gz``) without trusting what it holds."""

from __future__ import annotations

import tarfile
from pathlib import Path, PurePosixPath

from api.domain.errors import BackendError


def safe_extract(archive: Path, dest: Path) -> None:
    """Unpack a tar archive into ``dest``, refusing anything but plain files and folders inside it.

    Every member is checked before anything is written (absolute names, ``..``, links, devices),
    and ``tarfile``'s ``data`` filter checks again while extracting.
    """
    root = dest.resolve()
    with tarfile.open(archive, "r:*") as tar:
        members = tar.getmembers()
        for member in members:
            name = PurePosixPath(member.name)
            if name.is_absolute() or ".." in name.parts or "\\" in member.name:
                raise BackendError(f"unsafe path in model archive: {member.name!r}")
            if not (member.isfile() or member.isdir()):
                raise BackendError(f"model archive member {member.name!r} is not a plain file or folder")
            target = (root / name).resolve()
            if target != root and root not in target.parents:
                raise BackendError(f"model archive member {member.name!r} escapes the destination")
        try:
            tar.extractall(root, members=members, filter="data")
        except tarfile.FilterError as exc:
            raise BackendError(f"unsafe model archive: {exc}") from exc
