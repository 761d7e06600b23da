"""A benchmark's JSON result written as it grows: every `update` rewrites the file atomically, so a
step cut by a deadline still leaves every number it had measured."""

from __future__ import annotations

import json
import os
from typing import Any, Optional


class JsonResult(dict):
    """A dict that is saved to ``path`` (if given) at every `update`."""

    def __init__(self, path: Optional[str], **fields: Any):
        super().__init__(fields)
        self.path = path
        self.save()

    def update(self, *args, **fields) -> None:  # type: ignore[override]
        super().update(*args, **fields)
        self.save()

    def save(self) -> None:
        if not self.path:
            return
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(self, f, indent=1, default=str)
        os.replace(tmp, self.path)
