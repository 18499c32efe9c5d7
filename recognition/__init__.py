"""Product recognition on whole livestream videos, and a Python API (docs/livestream.md)."""
