"""Every setting the app reads is documented in .env.example, with a comment above it."""

from __future__ import annotations

import re
from pathlib import Path

from marketplace.config import DEFAULT_LIMITS

ROOT = Path(__file__).resolve().parent.parent


def _read_settings() -> set[str]:
    source = (ROOT / "marketplace" / "config.py").read_text()
    names = set(re.findall(r'env\.get\("([A-Z_]+)"', source)) | set(re.findall(r'_int\(env, "([A-Z_]+)"', source))
    names |= {f"RATELIMIT_{name.upper()}" for name in DEFAULT_LIMITS}
    return names


def test_every_setting_is_in_env_example_with_a_comment():
    lines = (ROOT / ".env.example").read_text().splitlines()
    documented: dict[str, bool] = {}
    for i, line in enumerate(lines):
        match = re.match(r"^([A-Z_]+)=", line)
        if match:
            # a comment sits directly above it, or above the group it belongs to
            j = i - 1
            while j >= 0 and re.match(r"^[A-Z_]+=", lines[j]):
                j -= 1
            documented[match.group(1)] = j >= 0 and lines[j].startswith("#")
    missing = sorted(_read_settings() - documented.keys())
    assert not missing, f"settings missing from .env.example: {missing}"
    uncommented = sorted(name for name, ok in documented.items() if not ok)
    assert not uncommented, f"settings without a comment: {uncommented}"


def test_env_example_lists_no_unknown_setting():
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert documented <= _read_settings()
