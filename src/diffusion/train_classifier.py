"""``python -m diffusion.train_classifier``: the command lives in ``diffusion.commands.train_classifier``."""
from diffusion.commands.train_classifier import main

if __name__ == "__main__":
    raise SystemExit(main())
