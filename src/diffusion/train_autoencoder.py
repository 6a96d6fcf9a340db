"""``python -m diffusion.train_autoencoder``: see ``diffusion.commands.train_autoencoder``."""
from diffusion.commands.train_autoencoder import main

if __name__ == "__main__":
    raise SystemExit(main())
