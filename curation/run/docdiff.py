"""Where two metadata documents differ: the dotted paths ``verify`` reports."""

from __future__ import annotations

from typing import Any

__all__ = ["Found", "differences"]

Found = list[tuple[str, Any, Any]]


def differences(expected: Any, actual: Any, path: str, out: Found) -> None:
    """Append (dotted path, expected, actual) for every place where two documents differ."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in list(expected) + [k for k in actual if k not in expected]:
            sub = f"{path}.{key}" if path else str(key)
            if key not in actual:
                out.append((sub, expected[key], None))
            elif key not in expected:
                out.append((sub, None, actual[key]))
            else:
                differences(expected[key], actual[key], sub, out)
        return
    if expected != actual or type(expected) is not type(actual):
        out.append((path, expected, actual))
