"""The command's entry point. Hook events take a short path that skips loading the CLI."""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["hook"]:
        from .hook import main as hook_main

        sys.exit(hook_main())
    if sys.argv[1:2] == ["api-launcher"]:
        from .api import launcher_main

        launcher_main(int(sys.argv[2]), int(sys.argv[3]))
        sys.exit(0)
    if sys.argv[1:2] == ["simulated-claude"]:
        from .simclaude import main as simulated_main

        sys.exit(simulated_main(sys.argv[2:]))
    from .cli import main as cli_main

    cli_main()
