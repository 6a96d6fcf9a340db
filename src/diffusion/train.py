"""``python -m diffusion.train``: the command lives in ``diffusion.commands.train``."""
from diffusion.commands.train import main

if __name__ == "__main__":
    raise SystemExit(main())
