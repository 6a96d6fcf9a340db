"""``python -m diffusion.edit``: see ``diffusion.commands.edit``."""
from diffusion.commands.edit import main

if __name__ == "__main__":
    main()
