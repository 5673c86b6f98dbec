"""``python -m torchdoctor``."""

from torchdoctor.cli.main import main

raise SystemExit(main())
