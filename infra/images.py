"""Build the two container images and push them to the stack's ECR repositories.

    python -m infra.images [--stack fastuner] [--region us-east-1] [--tag TAG] [--dry-run]
    make images ARGS="--stack fastuner --dry-run"

The repositories come from the stack outputs ``TrainingRepositoryUri`` and ``InferenceRepositoryUri``.
Each image is tagged with the git short sha of HEAD (``-dirty`` appended when ``containers/`` has
uncommitted changes) and ``latest``. Docker logs into ECR with a token from
``ecr:GetAuthorizationToken`` (boto3; the AWS CLI is not needed), given on standard input.

The docker commands are echoed to stderr (``+ docker ...``); stdout gets only the ``export
FASTUNER_*_IMAGE_URI=...`` lines, so ``eval "$(python -m infra.images)"`` sets them. ``--dry-run``
reads the stack outputs and prints the same commands without running docker or logging in.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import boto3
from botocore.exceptions import BotoCoreError, ClientError

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STACK = "fastuner"
DEFAULT_PLATFORM = "linux/amd64"  # SageMaker runs x86_64 images
LATEST = "latest"
TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # docker's tag grammar


@dataclass(frozen=True)
class Image:
    name: str
    output: str  # the stack output holding the repository URI
    setting: str  # the control-plane setting the pushed URI goes into
    dockerfile: str  # relative to the repository root
    context: str  # relative to the repository root


# Both Dockerfiles copy paths relative to the repository root, their build context (the inference
# image takes scu/hub_token.py from containers/training too).
IMAGES: tuple[Image, ...] = (
    Image(
        name="training",
        output="TrainingRepositoryUri",
        setting="FASTUNER_TRAINING_IMAGE_URI",
        dockerfile="containers/training/Dockerfile",
        context=".",
    ),
    Image(
        name="inference",
        output="InferenceRepositoryUri",
        setting="FASTUNER_INFERENCE_IMAGE_URI",
        dockerfile="containers/inference/Dockerfile",
        context=".",
    ),
)


class ImagesError(Exception):
    """A problem reported to the user as one line (exit status 2)."""


@dataclass(frozen=True)
class Step:
    argv: tuple[str, ...]
    stdin_from: str | None = None  # what feeds standard input (display only): the ECR token

    def display(self) -> str:
        line = shlex.join(self.argv)
        return f"{line} < {self.stdin_from}" if self.stdin_from else line


@dataclass(frozen=True)
class Plan:
    registries: tuple[str, ...]
    steps: tuple[Step, ...]
    exports: dict[str, str]  # setting -> pushed image URI (the immutable tag, not latest)


def stack_outputs(cloudformation: Any, stack: str) -> dict[str, str]:
    try:
        stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        raise ImagesError(f"stack {stack!r}: {exc.response.get('Error', {}).get('Message', exc)}") from exc
    if not stacks:
        raise ImagesError(f"stack {stack!r} not found")
    return {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}


def git_tag(root: Path = ROOT) -> str:
    """HEAD's short sha, plus ``-dirty`` if anything the images copy (``containers/``) is uncommitted."""

    def git(*args: str) -> str:
        try:
            done = subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise ImagesError(f"git {args[0]} failed ({exc}); pass --tag") from exc
        return done.stdout.strip()

    sha = git("rev-parse", "--short", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=all", "--", "containers")
    return f"{sha}-dirty" if dirty else sha


def registry_of(repository_uri: str) -> str:
    return repository_uri.split("/", 1)[0]


def plan(
    outputs: dict[str, str],
    tag: str,
    *,
    images: Sequence[Image] = IMAGES,
    platform: str = DEFAULT_PLATFORM,
) -> Plan:
    """The docker commands: log into each registry, then build, tag and push each image."""
    missing = [image.output for image in images if not outputs.get(image.output)]
    if missing:
        raise ImagesError(f"the stack has no output {', '.join(missing)} (is it a fastuner stack?)")
    tags = [tag] if tag == LATEST else [tag, LATEST]
    registries: list[str] = []
    for image in images:
        registry = registry_of(outputs[image.output])
        if registry not in registries:
            registries.append(registry)
    steps = [
        Step(
            ("docker", "login", "--username", "AWS", "--password-stdin", registry),
            "ecr:GetAuthorizationToken",
        )
        for registry in registries
    ]
    exports: dict[str, str] = {}
    for image in images:
        repository = outputs[image.output]
        refs = [f"{repository}:{t}" for t in tags]
        build = ["docker", "build", "--platform", platform, "-f", image.dockerfile]
        for ref in refs:
            build += ["-t", ref]
        steps.append(Step((*build, image.context)))
        steps += [Step(("docker", "push", ref)) for ref in refs]
        exports[image.setting] = refs[0]
    return Plan(tuple(registries), tuple(steps), exports)


def ecr_password(ecr: Any) -> str:
    data = ecr.get_authorization_token()["authorizationData"][0]
    user, _, password = base64.b64decode(data["authorizationToken"]).decode().partition(":")
    if user != "AWS" or not password:
        raise ImagesError("unexpected ECR authorization token")
    return password


def execute(the_plan: Plan, ecr: Any, *, root: Path = ROOT, log: TextIO = sys.stderr) -> None:
    if shutil.which("docker") is None:
        raise ImagesError("docker not found on PATH")
    password: str | None = None
    for step in the_plan.steps:
        print(f"+ {step.display()}", file=log, flush=True)
        stdin = None
        if step.stdin_from:
            password = password or ecr_password(ecr)
            stdin = password
        try:
            subprocess.run(step.argv, cwd=root, check=True, input=stdin, text=stdin is not None)
        except subprocess.CalledProcessError as exc:
            raise ImagesError(
                f"{step.argv[0]} {step.argv[1]} failed with exit status {exc.returncode}"
            ) from exc


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m infra.images",
        description="Build the fastuner training and inference images and push them to the stack's ECR repositories.",
    )
    parser.add_argument(
        "--stack",
        default=os.environ.get("FASTUNER_STACK", DEFAULT_STACK),
        help="CloudFormation stack name (default: $FASTUNER_STACK or %(default)s)",
    )
    parser.add_argument(
        "--region",
        default=None,
        help="AWS region (default: $AWS_REGION, $AWS_DEFAULT_REGION or the profile's)",
    )
    parser.add_argument(
        "--tag", default=None, help="image tag (default: git short sha; 'latest' is added too)"
    )
    parser.add_argument(
        "--image",
        action="append",
        choices=[image.name for image in IMAGES],
        help="only this image (repeatable; default: both)",
    )
    parser.add_argument(
        "--platform", default=DEFAULT_PLATFORM, help="docker build --platform (default: %(default)s)"
    )
    parser.add_argument("--dry-run", action="store_true", help="print the docker commands, run nothing")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, log: TextIO | None = None) -> int:
    out = out or sys.stdout
    log = log or sys.stderr
    args = parse_args(argv)
    region = args.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    try:
        session = boto3.session.Session(region_name=region)
        if not session.region_name:
            raise ImagesError("no AWS region: pass --region or set AWS_REGION")
        outputs = stack_outputs(session.client("cloudformation"), args.stack)
        tag = args.tag or git_tag()
        if not TAG.fullmatch(tag):
            raise ImagesError(f"invalid image tag {tag!r}")
        selected = [image for image in IMAGES if not args.image or image.name in args.image]
        the_plan = plan(outputs, tag, images=selected, platform=args.platform)
        if args.dry_run:
            for step in the_plan.steps:
                print(f"+ {step.display()}", file=log)
            print("# dry run: nothing was built, pushed or logged into", file=log)
        else:
            execute(the_plan, session.client("ecr"), log=log)
    except (ImagesError, BotoCoreError, ClientError) as exc:  # BotoCoreError: no credentials, ...
        print(f"error: {exc}", file=log)
        return 2
    for setting, uri in the_plan.exports.items():
        print(f"export {setting}={shlex.quote(uri)}", file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
