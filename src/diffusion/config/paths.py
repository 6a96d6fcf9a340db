"""Where the package's own files live, and the resolvers its config files use.

``CONF_DIR`` is the Hydra config tree the entry points compose from. It ships inside the
package (``diffusion/conf``), so an installed wheel finds it as a checkout does; in a
checkout the top-level ``conf`` is a link to it. A folder of your own is added with Hydra's
``--config-dir`` or ``hydra.searchpath``.

``${folder_classes:<folder>}`` is the number of class subfolders of a folder of images (null
when it is unlabelled; ``diffusion.data.image_files``), so ``data=image_folder`` describes its
classes for ``conditioning=class`` as the built-in datasets do. It is registered on import of
this module, which every command (through ``diffusion.commands.launcher``) imports before
composing a config.
"""

from pathlib import Path

from omegaconf import OmegaConf

from diffusion.data.image_files import count_classes

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

if not OmegaConf.has_resolver("folder_classes"):
    OmegaConf.register_new_resolver("folder_classes", count_classes, use_cache=True)
