"""`python -m spa_compiler` is the `spa-compile` command."""

from spa_compiler.cli import main

raise SystemExit(main())
