"""``python -m diffusion.visualize``: see ``diffusion.commands.visualize``."""
from diffusion.commands.visualize import main

if __name__ == "__main__":
    main()
