"""``python -m brainmigrate``: the command line."""

from brainmigrate._cli.main import main

raise SystemExit(main())
