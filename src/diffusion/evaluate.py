"""``python -m diffusion.evaluate``: the command lives in ``diffusion.commands.evaluate``."""
from diffusion.commands.evaluate import main

if __name__ == "__main__":
    raise SystemExit(main())
