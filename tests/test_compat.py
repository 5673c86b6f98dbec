"""Old (0.1.0) import paths still work, warn once, and are the same module objects."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from torchdoctor._compat import MOVED_MODULES


@pytest.mark.slow
@pytest.mark.parametrize("old_name", sorted(MOVED_MODULES))
def test_old_path_is_the_new_module_with_a_deprecation_warning(old_name: str) -> None:
    code = (f"import warnings, importlib\n"
            f"with warnings.catch_warnings(record=True) as caught:\n"
            f"    warnings.simplefilter('always')\n"
            f"    old = importlib.import_module({old_name!r})\n"
            f"new = importlib.import_module({MOVED_MODULES[old_name]!r})\n"
            f"assert old is new, (old, new)\n"
            f"assert any(issubclass(w.category, DeprecationWarning) and {old_name!r} in "
            f"str(w.message) for w in caught), [str(w.message) for w in caught]\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_new_paths_import_without_deprecation_warnings() -> None:
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DeprecationWarning)
        for new_name in sorted(set(MOVED_MODULES.values())):
            importlib.import_module(new_name)
    assert [str(w.message) for w in caught if "moved to" in str(w.message)] == []


def test_public_names_survive_the_move() -> None:
    import torchdoctor

    assert callable(torchdoctor.watch)
    assert callable(torchdoctor.diagnose)
    assert torchdoctor.CheckOptions().limit_batches > 0
