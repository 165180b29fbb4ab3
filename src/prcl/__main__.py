"""`python -m prcl` (and `torchrun -m prcl`) entry point."""

from prcl.cli import main

raise SystemExit(main())
