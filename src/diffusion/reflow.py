"""``python -m diffusion.reflow``: the command lives in ``diffusion.commands.reflow``."""
from diffusion.commands.reflow import main

if __name__ == "__main__":
    raise SystemExit(main())
