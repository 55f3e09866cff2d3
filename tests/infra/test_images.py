"""``python -m infra.images``: the stack outputs become the right docker commands and FASTUNER_* lines.

No docker daemon and no network: the stack is deployed on moto (the ``stack`` fixture) and docker
itself is replaced by a recorder where the commands "run"."""

from __future__ import annotations

import base64
import io
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from infra import images
from tests.infra.support import ACCOUNT, REGION, ROOT, STACK

REGISTRY = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com"
TRAINING = f"{REGISTRY}/fastuner-training"
INFERENCE = f"{REGISTRY}/fastuner-inference"
TAG = "abc1234"


def run_main(*argv: str) -> tuple[int, str, str]:
    out, log = io.StringIO(), io.StringIO()
    rc = images.main(list(argv), out=out, log=log)
    return rc, out.getvalue(), log.getvalue()


def commands(log: str) -> list[str]:
    return [line.removeprefix("+ ") for line in log.splitlines() if line.startswith("+ ")]


@pytest.fixture
def no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    """Anything that would run docker (or log into ECR) fails the test."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"ran {args} in a dry run")

    monkeypatch.setattr(images, "execute", refuse)
    monkeypatch.setattr(images, "ecr_password", refuse)


def test_dry_run_resolves_uris_tags_and_commands(stack: dict[str, str], no_docker: None) -> None:
    assert stack["TrainingRepositoryUri"] == TRAINING and stack["InferenceRepositoryUri"] == INFERENCE

    rc, out, log = run_main("--stack", STACK, "--region", REGION, "--tag", TAG, "--dry-run")

    assert rc == 0, log
    assert out.splitlines() == [
        f"export FASTUNER_TRAINING_IMAGE_URI={TRAINING}:{TAG}",
        f"export FASTUNER_INFERENCE_IMAGE_URI={INFERENCE}:{TAG}",
    ]
    assert commands(log) == [
        f"docker login --username AWS --password-stdin {REGISTRY} < ecr:GetAuthorizationToken",
        f"docker build --platform linux/amd64 -f containers/training/Dockerfile"
        f" -t {TRAINING}:{TAG} -t {TRAINING}:latest .",
        f"docker push {TRAINING}:{TAG}",
        f"docker push {TRAINING}:latest",
        f"docker build --platform linux/amd64 -f containers/inference/Dockerfile"
        f" -t {INFERENCE}:{TAG} -t {INFERENCE}:latest .",
        f"docker push {INFERENCE}:{TAG}",
        f"docker push {INFERENCE}:latest",
    ]
    assert "dry run" in log


def test_exports_can_be_evaluated_by_a_shell(stack: dict[str, str], no_docker: None) -> None:
    _, out, _ = run_main("--stack", STACK, "--region", REGION, "--tag", TAG, "--dry-run")
    env = subprocess.run(
        [
            "bash",
            "-c",
            f'{out}\nprintf \'%s\\n\' "$FASTUNER_TRAINING_IMAGE_URI" "$FASTUNER_INFERENCE_IMAGE_URI"',
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert env.splitlines() == [f"{TRAINING}:{TAG}", f"{INFERENCE}:{TAG}"]


def test_build_contexts_and_dockerfiles_exist() -> None:
    for image in images.IMAGES:
        assert (ROOT / image.dockerfile).is_file()
        assert (ROOT / image.context).is_dir()
    # Both Dockerfiles copy paths relative to the repository root; every source is there.
    training, inference = images.IMAGES
    assert "COPY containers/training/" in (ROOT / training.dockerfile).read_text()
    assert "COPY containers/inference/loraserve/" in (ROOT / inference.dockerfile).read_text()
    for image in images.IMAGES:
        for line in (ROOT / image.dockerfile).read_text().splitlines():
            if line.startswith("COPY ") and "--from" not in line:
                *sources, _ = line.split()[1:]
                assert all((ROOT / image.context / source).exists() for source in sources), line


def test_one_image_and_the_default_tag(stack: dict[str, str], no_docker: None) -> None:
    rc, out, log = run_main("--stack", STACK, "--region", REGION, "--image", "inference", "--dry-run")
    assert rc == 0, log
    tag = images.git_tag()
    assert out.splitlines() == [f"export FASTUNER_INFERENCE_IMAGE_URI={INFERENCE}:{tag}"]
    cmds = commands(log)
    assert len(cmds) == 4 and not any("training" in c for c in cmds)

    # --tag latest: one tag, one push.
    rc, out, log = run_main(
        "--stack", STACK, "--region", REGION, "--image", "training", "--tag", "latest", "--dry-run"
    )
    assert rc == 0, log
    assert out.splitlines() == [f"export FASTUNER_TRAINING_IMAGE_URI={TRAINING}:latest"]
    assert commands(log)[1:] == [
        f"docker build --platform linux/amd64 -f containers/training/Dockerfile -t {TRAINING}:latest .",
        f"docker push {TRAINING}:latest",
    ]


def test_region_from_the_environment(
    stack: dict[str, str], no_docker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_REGION", REGION)
    monkeypatch.setenv("FASTUNER_STACK", STACK)
    rc, out, log = run_main("--tag", TAG, "--dry-run")
    assert rc == 0, log
    assert f"{TRAINING}:{TAG}" in out


def test_errors_are_one_line(stack: dict[str, str], no_docker: None) -> None:
    rc, out, log = run_main("--stack", "no-such-stack", "--region", REGION, "--tag", TAG, "--dry-run")
    assert rc == 2 and not out
    assert log.startswith("error: stack 'no-such-stack'") and log.count("\n") == 1

    rc, _, log = run_main("--stack", STACK, "--region", REGION, "--tag", "bad tag", "--dry-run")
    assert rc == 2 and "invalid image tag" in log

    with pytest.raises(images.ImagesError, match="InferenceRepositoryUri"):
        images.plan({"TrainingRepositoryUri": TRAINING}, TAG)


def test_run_logs_in_with_the_ecr_token_then_builds_and_pushes(
    stack: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[list[str], Any, Path]] = []

    def fake_run(argv: list[str], *, cwd: Path, check: bool, input: Any = None, text: bool = False) -> Any:
        assert check
        calls.append((list(argv), input, cwd))
        return subprocess.CompletedProcess(argv, 0)

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", fake_run)
    rc, out, log = run_main("--stack", STACK, "--region", REGION, "--tag", TAG)
    monkeypatch.undo()

    assert rc == 0, log
    assert out.splitlines()[0] == f"export FASTUNER_TRAINING_IMAGE_URI={TRAINING}:{TAG}"
    argvs = [argv for argv, _, _ in calls]
    assert [shlex.join(a) for a in argvs] == [c.split(" < ")[0] for c in commands(log)]
    assert argvs[0][:2] == ["docker", "login"] and len(argvs) == 7
    assert all(cwd == ROOT for _, _, cwd in calls)
    # The password (moto's token is base64 "AWS:<password>") goes on stdin, never on the command line.
    password = calls[0][1]
    assert password and all(password not in " ".join(a) for a in argvs)
    assert all(stdin is None for _, stdin, _ in calls[1:])


def test_ecr_password_decodes_the_token() -> None:
    class Ecr:
        def get_authorization_token(self) -> dict[str, Any]:
            token = base64.b64encode(b"AWS:s3cr3t").decode()
            return {"authorizationData": [{"authorizationToken": token, "proxyEndpoint": "https://x"}]}

    assert images.ecr_password(Ecr()) == "s3cr3t"


def test_a_failing_docker_step_stops_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(argv: list[str], **kwargs: Any) -> Any:
        raise subprocess.CalledProcessError(1, argv)

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", fail)
    the_plan = images.plan({"TrainingRepositoryUri": TRAINING, "InferenceRepositoryUri": INFERENCE}, TAG)
    no_login = images.Plan(the_plan.registries, the_plan.steps[1:], the_plan.exports)
    with pytest.raises(images.ImagesError, match="docker build failed with exit status 1"):
        images.execute(no_login, ecr=None, log=io.StringIO())


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_git_tag_is_the_short_sha_and_dirty_only_for_containers(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q")
    (tmp_path / "containers").mkdir()
    (tmp_path / "containers" / "Dockerfile").write_text("FROM scratch\n")
    (tmp_path / "README.md").write_text("x\n")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "init")
    sha = git(tmp_path, "rev-parse", "--short", "HEAD")
    assert images.git_tag(tmp_path) == sha
    (tmp_path / "README.md").write_text("changed\n")  # not in an image
    assert images.git_tag(tmp_path) == sha
    (tmp_path / "containers" / "new.py").write_text("")  # untracked, but COPY would take it
    assert images.git_tag(tmp_path) == f"{sha}-dirty"
    with pytest.raises(images.ImagesError, match="pass --tag"):
        images.git_tag(tmp_path / "containers" / "no-such-dir")


def test_runs_as_a_module_and_from_make() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    help_text = subprocess.run(
        [sys.executable, "-m", "infra.images", "--help"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert help_text.returncode == 0 and "--dry-run" in help_text.stdout
    if shutil.which("make") is None:
        pytest.skip("no make")
    recipe = subprocess.run(
        ["make", "-n", "images", "ARGS=--dry-run"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "-m infra.images --dry-run" in recipe
