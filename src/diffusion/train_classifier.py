"""``python -m diffusion.train_classifier``: see ``diffusion.commands.train_classifier``."""
from diffusion.commands.train_classifier import main

if __name__ == "__main__":
    raise SystemExit(main())
