"""First on PYTHONPATH, this makes `import torch` fail: a machine without PyTorch, for the
subprocesses that must work there (the served model, the example ONNX client)."""

import sys


class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by tests/helpers/torchless)", name=name)
        return None


sys.meta_path.insert(0, _NoTorch())
