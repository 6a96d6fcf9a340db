"""``python -m diffusion.edit``: the command lives in ``diffusion.commands.edit``."""
from diffusion.commands.edit import main

if __name__ == "__main__":
    raise SystemExit(main())
