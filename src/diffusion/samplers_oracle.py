"""``python -m diffusion.samplers_oracle``: the command lives in ``diffusion.commands.samplers_oracle``."""
from diffusion.commands.samplers_oracle import main

if __name__ == "__main__":
    raise SystemExit(main())
