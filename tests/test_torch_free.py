"""The runtime must work on a host without torch: every module imports with torch blocked."""
from __future__ import annotations

import pkgutil
import subprocess
import sys

import cover_engine.runtime as runtime

CODE = """
import importlib, sys

class NoTorch:  # any 'import torch' now raises ImportError, as on a host without it
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is blocked in this test')

sys.meta_path.insert(0, NoTorch())
for name in {modules!r}:
    importlib.import_module(name)
from cover_engine.runtime.engines.base import backend_class
backend_class('onnxruntime')
print('ok')
"""


def test_every_runtime_module_imports_without_torch():
    modules = [m.name for m in pkgutil.walk_packages(runtime.__path__, "cover_engine.runtime.")]
    assert "cover_engine.runtime.cli.run" in modules and len(modules) > 15
    out = subprocess.run([sys.executable, "-c", CODE.format(modules=modules)],
                         capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
