"""Processes that end with their parent: no orphan keeps training or decoding after its launcher is killed."""

from __future__ import annotations

import os
import sys


def signal_when_parent_dies(signum: int) -> bool:
    """Ask Linux to send `signum` to this process when its parent dies (even by kill -9).

    Returns False when the parent is already gone (nothing would send it); True otherwise, including on
    systems without the facility, where there is nothing more to do.
    """
    if not sys.platform.startswith("linux"):
        return True
    parent = os.getppid()
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signum)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return True
    return os.getppid() == parent  # it died before the call above: nothing will signal us
