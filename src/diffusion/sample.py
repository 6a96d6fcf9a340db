"""``python -m diffusion.sample``: see ``diffusion.commands.sample``."""
from diffusion.commands.sample import main

if __name__ == "__main__":
    main()
