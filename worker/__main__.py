"""`python -m worker`: the same CLI as `possync`."""

from worker.cli import main

raise SystemExit(main())
