"""``python -m diffusion.bench``: the command lives in ``diffusion.commands.bench``."""
from diffusion.commands.bench import main

if __name__ == "__main__":
    raise SystemExit(main())
