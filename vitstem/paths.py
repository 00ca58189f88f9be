"""Where vitstem's configuration lives: ``conf/`` in a checkout, ``vitstem/conf`` in an installed wheel."""
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
CONF_DIR = _PACKAGE / "conf" if (_PACKAGE / "conf").is_dir() else _PACKAGE.parent / "conf"
