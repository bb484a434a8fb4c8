"""What consumers load from the registry: the pyfunc models of text and image generators, their signatures and
requirements.

A registered model is logged as code (models-from-code): one of the pyfunc files below, with the `models` and
`serving` packages as its code paths, so loading it imports only those two packages and never unpickles anything.
"""

from pathlib import Path

SERVING_DIR = Path(__file__).resolve().parent


def pyfunc_file(module: str) -> Path:
    """Return the file of a pyfunc module named by a modality (`serving_module`, e.g. "serving.text_pyfunc")."""
    return SERVING_DIR / f"{module.rpartition('.')[2]}.py"
CODE_PATHS = (SERVING_DIR.parent / "models", SERVING_DIR)  # the packages a logged model carries
