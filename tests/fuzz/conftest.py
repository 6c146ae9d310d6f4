"""The fuzz tests drive a real server: reuse the end-to-end fixtures."""

from tests.e2e.conftest import e2e_server, launch_server, server_target

__all__ = ["e2e_server", "launch_server", "server_target"]
