"""`python -m mategemm` runs the console command."""
from mategemm.cli import main

raise SystemExit(main())
