"""``python -m diffusion.evaluate``: see ``diffusion.commands.evaluate``."""
from diffusion.commands.evaluate import main

if __name__ == "__main__":
    main()
