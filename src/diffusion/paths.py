"""Where the package's own files live; imports nothing else of the package.

``CONF_DIR`` is the Hydra config tree the entry points compose from. It ships inside the
package (``diffusion/conf``), so an installed wheel finds it as a checkout does; in a
checkout the top-level ``conf`` is a link to it. A folder of your own is added with Hydra's
``--config-dir`` or ``hydra.searchpath``.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent / "conf"
