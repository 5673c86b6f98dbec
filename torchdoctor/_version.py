"""torchdoctor's version, in a module that imports nothing, so that every module (the
JSON report writes it) can depend on it without depending on the package root."""

from __future__ import annotations

__version__ = "0.1.0"
