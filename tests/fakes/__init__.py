"""Fakes that stand in for real services in tests (HTTP servers on loopback)."""
