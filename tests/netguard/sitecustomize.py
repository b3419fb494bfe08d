"""Loaded by every Python process the tests start (the tests put this folder first on
PYTHONPATH; tests/conftest.py installs the same guard in-process):

- the network guard: any connection or name lookup other than loopback is recorded in
  $PLANKTON_NETGUARD_LOG and refused with OSError; tests/conftest.py fails the test that caused it;
- fault injection (tests_faults.py), only where a test sets its variable.
"""
import os

if os.environ.get("PLANKTON_NETGUARD_LOG"):
    from tests_netguard import install  # noqa: F401  (the guard, shared with conftest)

    install(os.environ["PLANKTON_NETGUARD_LOG"])

if os.environ.get("PLANKTON_TEST_KILL_BEFORE") or os.environ.get("PLANKTON_TEST_KILL_RANK"):
    from tests_faults import install as install_faults

    install_faults()
