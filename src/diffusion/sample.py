"""``python -m diffusion.sample``: the command lives in ``diffusion.commands.sample``."""
from diffusion.commands.sample import main

if __name__ == "__main__":
    raise SystemExit(main())
