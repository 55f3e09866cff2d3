"""Fault injection for crash tests (test-only; inert unless the environment arms it).

``FASTUNER_FAULT_AT=<point>[,<point>…]`` makes the process die the moment it reaches one of the
named points, the way ``kill -9`` would: ``os.kill(os.getpid(), SIGKILL)``, no cleanup, no
``finally``. ``FASTUNER_FAULT_ACTION=raise`` raises :class:`InjectedCrash` instead (a
``BaseException``, so no ``except Exception`` handler swallows it) for tests that crash a service
in-process. Unset, a point costs one environment lookup.

Points in use: ``finetune.before_launch`` (launch recorded, backend not called yet),
``finetune.after_backend_call`` (backend job started, its state not recorded),
``finetune.after_db_write`` (launch recorded, response not sent); dataset upload:
``dataset.before_process`` (upload spooled to scratch), ``dataset.after_split`` (split files in
scratch), ``store.before_rename`` (a local-store write half done), ``dataset.after_first_object``
(one split stored), ``dataset.before_row`` (every object stored, no row yet).
"""

from __future__ import annotations

import os
import signal

ENV_AT = "FASTUNER_FAULT_AT"
ENV_ACTION = "FASTUNER_FAULT_ACTION"


class InjectedCrash(BaseException):
    """Raised at an armed point when ``FASTUNER_FAULT_ACTION=raise``."""


def point(name: str) -> None:
    """Die here if ``name`` is armed; otherwise do nothing."""
    armed = os.environ.get(ENV_AT)
    if not armed or name not in armed.split(","):
        return
    if os.environ.get(ENV_ACTION) == "raise":
        raise InjectedCrash(name)
    os.kill(os.getpid(), signal.SIGKILL)
