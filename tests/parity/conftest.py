import os
import sys

# Make the reference package (python/strata_ref) importable when pytest is run directly, without ctest's
# PYTHONPATH. The compiled `strata` module is expected on PYTHONPATH (ctest sets it to the build tree).
_PYTHON_DIR = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "python"))
if _PYTHON_DIR not in sys.path:
    sys.path.insert(0, _PYTHON_DIR)
