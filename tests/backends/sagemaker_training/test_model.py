"""Fetching the trained adapter: SageMaker's model.tar.gz, unpacked safely."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from api.backends.base import TrainingSpec
from api.backends.sagemaker import SageMakerBackend, safe_extract
from api.domain.errors import BackendError
from api.storage.s3 import S3Store
from tests.backends.sagemaker_training.support import JOB_NAME, MODEL_FILES, make_tar, model_key


def test_fetch_model(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], store: S3Store, tmp_path: Path
) -> None:
    state = backend.start_training(make_spec())
    assert backend.model_key(JOB_NAME, state) == model_key()
    assert backend.model_key(JOB_NAME, {}) == model_key()  # from DescribeTrainingJob's ModelArtifacts
    members = {f"./{k}" if k == "eval.json" else k: v for k, v in MODEL_FILES.items()}
    store.put_file(model_key(), make_tar(tmp_path / "model.tar.gz", members))

    dest = tmp_path / "adapter"
    backend.fetch_model(JOB_NAME, state, dest)
    assert {p.name: p.read_bytes() for p in dest.iterdir()} == MODEL_FILES


@pytest.mark.parametrize(
    ("members", "links"),
    [
        ({**MODEL_FILES, "../evil.txt": b"x"}, None),
        ({**MODEL_FILES, "sub/../../evil.txt": b"x"}, None),
        ({**MODEL_FILES, "/tmp/evil.txt": b"x"}, None),
        (MODEL_FILES, {"link": "/etc/passwd"}),
        (MODEL_FILES, {"link": "../evil.txt"}),
    ],
)
def test_fetch_model_rejects_unsafe_archives(
    backend: SageMakerBackend,
    make_spec: Callable[..., TrainingSpec],
    store: S3Store,
    tmp_path: Path,
    members: dict[str, bytes],
    links: dict[str, str] | None,
) -> None:
    state = backend.start_training(make_spec())
    store.put_file(model_key(), make_tar(tmp_path / "model.tar.gz", members, links=links))
    dest = tmp_path / "out" / "adapter"
    with pytest.raises(BackendError, match="model archive"):
        backend.fetch_model(JOB_NAME, state, dest)
    assert list(dest.iterdir()) == []  # checked before anything was written
    assert not (tmp_path / "out" / "evil.txt").exists()


def test_safe_extract_refuses_before_writing(tmp_path: Path) -> None:
    archive = make_tar(tmp_path / "m.tar.gz", {"ok.txt": b"fine", "../evil.txt": b"x"})
    with pytest.raises(BackendError, match="unsafe path"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "dest" / "ok.txt").exists()


def test_fetch_model_without_an_archive_or_adapter(
    backend: SageMakerBackend, make_spec: Callable[..., TrainingSpec], store: S3Store, tmp_path: Path
) -> None:
    state = backend.start_training(make_spec())
    with pytest.raises(BackendError, match="left no model"):
        backend.fetch_model(JOB_NAME, state, tmp_path / "a")
    store.put_file(model_key(), make_tar(tmp_path / "model.tar.gz", {"eval.json": b"{}"}))
    with pytest.raises(BackendError, match=r"adapter_config\.json"):
        backend.fetch_model(JOB_NAME, state, tmp_path / "b")
