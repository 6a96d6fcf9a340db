"""``python -m diffusion.samplers_oracle``: see ``diffusion.commands.samplers_oracle``."""
from diffusion.commands.samplers_oracle import main

if __name__ == "__main__":
    raise SystemExit(main())
