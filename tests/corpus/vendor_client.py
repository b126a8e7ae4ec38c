"""A third-party-style client: the blocking call is two calls deep, out of the test's sight."""

from __future__ import annotations

import requests


def fetch_status(url: str) -> int:
    return _get(url).status_code


def _get(url: str) -> requests.Response:
    return requests.get(url, timeout=5)
