"""Waiting on a condition that another process makes true (a checkpoint, a row in the store)."""

import time


def wait_for(predicate, timeout: float, what: str):
    """The predicate's first truthy value, polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)
    return value
