"""``python -m diffusion.export``: the command lives in ``diffusion.commands.export``."""
from diffusion.commands.export import main

if __name__ == "__main__":
    raise SystemExit(main())
