"""pytest plugin (entry point ``pytest11``): the session's exit status survives concrete-python.

Without it a test session that ran a concrete circuit exits 0 even with failing tests
(:mod:`speed.exitstatus` explains why).  pytest loads this plugin before collecting any test, so
the hook is removed whenever a test imports concrete; ``pytest_unconfigure`` repeats the removal
in case concrete was imported by some path the import hook did not see.
"""

from __future__ import annotations

from speed.exitstatus import install, release_concrete_exit_hook

install()


def pytest_unconfigure(config) -> None:  # noqa: ARG001 - pytest hook signature
    release_concrete_exit_hook()
