"""Archives as SageMaker leaves a job's ``/opt/ml/model``."""

from __future__ import annotations

import io
import tarfile


def tar_gz(members: dict[str, bytes], *, links: dict[str, str] | None = None) -> bytes:
    """A ``.tar.gz`` of ``members`` (name -> data) and symlinks (name -> target)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buf.getvalue()
