"""Fixtures of the infra tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra.support import deployed_stack


@pytest.fixture(scope="module")
def stack() -> Iterator[dict[str, str]]:
    """The stack created on moto once per module (the tests only read it); yields its outputs.

    moto stays active while the module's tests run, so boto3 clients made in them see the stack."""
    with deployed_stack() as outputs:
        yield outputs
