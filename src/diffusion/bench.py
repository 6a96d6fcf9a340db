"""``python -m diffusion.bench``: see ``diffusion.commands.bench``."""
from diffusion.commands.bench import main

if __name__ == "__main__":
    main()
