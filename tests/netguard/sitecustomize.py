"""The test suite's network guard, loaded by every Python process the tests start (the tests
put this folder first on PYTHONPATH; tests/conftest.py installs the same guard in-process).

Any connection or name lookup other than loopback is recorded in $PLANKTON_NETGUARD_LOG and
refused with OSError; tests/conftest.py fails the test that caused it.
"""
import os

if os.environ.get("PLANKTON_NETGUARD_LOG"):
    from tests_netguard import install  # noqa: F401  (the guard, shared with conftest)

    install(os.environ["PLANKTON_NETGUARD_LOG"])
