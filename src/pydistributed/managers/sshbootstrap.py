"""``addprocs(machines, bootstrap=True)``: a host that has Python but not pydistributed.

The master ships pydistributed and its pure-Python dependencies (cloudpickle, tqdm, and
exceptiongroup before Python 3.11), as one zip of their source files, over the ssh session's
standard input, between the ``env`` values and the cookie. The remote interpreter runs
:data:`BOOT_CODE` (``python -c``): it reads the zip into memory, puts an importer for it first
on ``sys.meta_path`` and runs the worker's main. Nothing is written on the host (no cache, no
files to clean up), and the copy that runs is exactly the master's, so the version check at
join always passes for the packages (Python's major.minor must still match). The code is
compiled on the host at every start: a few hundred milliseconds more than an installed copy.
"""

from __future__ import annotations

import importlib.util
import io
import os
import sys
import threading
import zipfile

__all__ = ["BOOT_CODE", "HEADER", "archive", "shipped_packages"]

HEADER = b"PYDIST-BOOTSTRAP"

# Run by the remote ``python -c``; argv[1:] are the worker's arguments. Kept to the standard
# library, and small: it is on the remote command line (it holds no secret).
BOOT_CODE = r"""
import importlib.abc, importlib.util, io, sys, zipfile
head = sys.stdin.buffer.readline().split()
if len(head) != 2 or head[0] != b"PYDIST-BOOTSTRAP":
    sys.exit("pydistributed bootstrap: no archive on standard input")
blob = sys.stdin.buffer.read(int(head[1]))
zf = zipfile.ZipFile(io.BytesIO(blob))
files = set(zf.namelist())
class Shipped(importlib.abc.MetaPathFinder, importlib.abc.InspectLoader):
    def _where(self, name):
        base = name.replace(".", "/")
        for path, package in ((base + "/__init__.py", True), (base + ".py", False)):
            if path in files:
                return path, package
        return None, False
    def find_spec(self, name, path=None, target=None):
        where, package = self._where(name)
        if where is None:
            return None
        return importlib.util.spec_from_loader(
            name, self, origin="<pydist-bootstrap>/" + where, is_package=package)
    def is_package(self, name):
        return self._where(name)[1]
    def get_source(self, name):
        where = self._where(name)[0]
        return None if where is None else zf.read(where).decode("utf-8")
    def get_code(self, name):
        where = self._where(name)[0]
        return compile(zf.read(where), "<pydist-bootstrap>/" + where, "exec", dont_inherit=True)
    def exec_module(self, module):
        module.__file__ = module.__spec__.origin
        if self.is_package(module.__name__):
            module.__path__ = []
        exec(self.get_code(module.__name__), module.__dict__)
sys.meta_path.insert(0, Shipped())
from pydistributed.worker import main
main(sys.argv[1:])
"""

_lock = threading.Lock()
_archive: bytes | None = None


def shipped_packages() -> list[str]:
    """The packages shipped: pydistributed and the pure-Python ones it needs, as installed
    here (a missing optional one is left out)."""
    names = ["pydistributed", "cloudpickle", "tqdm"]
    if sys.version_info < (3, 11):
        names.append("exceptiongroup")
    return [n for n in names if importlib.util.find_spec(n) is not None]


def archive() -> bytes:
    """The zip of the shipped packages' ``.py`` files (made once per process)."""
    global _archive
    with _lock:
        if _archive is None:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
                for name in shipped_packages():
                    spec = importlib.util.find_spec(name)
                    assert spec is not None
                    if spec.submodule_search_locations:
                        root = next(iter(spec.submodule_search_locations))
                        for folder, dirs, files in os.walk(root):
                            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
                            for f in sorted(files):
                                if f.endswith(".py"):
                                    path = os.path.join(folder, f)
                                    rel = os.path.relpath(path, os.path.dirname(root))
                                    zf.write(path, rel.replace(os.sep, "/"))
                    elif spec.origin and spec.origin.endswith(".py"):
                        zf.write(spec.origin, f"{name}.py")
            _archive = buf.getvalue()
        return _archive
