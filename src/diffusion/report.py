"""``python -m diffusion.report``: the command lives in ``diffusion.commands.report``."""
from diffusion.commands.report import main

if __name__ == "__main__":
    raise SystemExit(main())
