"""``python -m diffusion.train``: see ``diffusion.commands.train``."""
from diffusion.commands.train import main

if __name__ == "__main__":
    main()
