"""``python -m diffusion.visualize``: the command lives in ``diffusion.commands.visualize``."""
from diffusion.commands.visualize import main

if __name__ == "__main__":
    raise SystemExit(main())
