"""End-to-end tests use the `label_studio` and `backend_url` fixtures of tests/conftest.py."""
