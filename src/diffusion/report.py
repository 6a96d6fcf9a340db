"""``python -m diffusion.report``: see ``diffusion.commands.report``."""
from diffusion.commands.report import main

if __name__ == "__main__":
    main()
