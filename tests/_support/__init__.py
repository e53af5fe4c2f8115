"""Test support: shared factories (the fixtures live in tests/conftest.py)."""
