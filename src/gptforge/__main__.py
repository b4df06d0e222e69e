# `python -m gptforge ...` (what torchrun launches) behaves exactly like the `gptforge` script.
from gptforge.entry import main

raise SystemExit(main())
