"""The ``torchdoctor`` command: ``main`` parses arguments and dispatches to one small
function per subcommand (``check``, ``reference``, ``profile``, ``list-checks``)."""

from torchdoctor.cli.main import main

__all__ = ["main"]
