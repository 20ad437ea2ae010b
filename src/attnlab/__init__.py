"""attnlab: train Transformer language models and compare attention mechanisms side by side.

The commands (``attnlab train|sample|evaluate|analyze|export|report``) are in ``attnlab.commands``; the configs
they compose ship in ``attnlab/conf``. Importing the package imports nothing heavy.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("attnlab")
except PackageNotFoundError:  # run from a checkout without installing it
    __version__ = "0+unknown"
