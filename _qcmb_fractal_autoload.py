"""Load qcmb-fractal's QCFractal plugin into every Python process that loads QCFractal's server.

``qcmb_fractal_autoload.pth``, which wheels and editable installs of qcmb-fractal put in site-packages,
calls :func:`install` when Python starts. That adds one finder in front of ``sys.meta_path`` which
imports nothing and costs a set lookup per import; only when ``qcfractal.config`` or
``qcfractal.db_socket.socket`` finishes loading does it hand the module to
``qcmb_fractal.plugin.server.hooks``. So a plain ``qcfractal-server`` command, and every API and job-runner
process it spawns, serves qcmb_manybody records. ``QCMB_FRACTAL_AUTOLOAD=0`` keeps the plugin out: QCFractal
then refuses to start on a database that holds the plugin's tables, instead of serving it half.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: every Python process imports this module, so it imports what startup has
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

ENV = "QCMB_FRACTAL_AUTOLOAD"
WATCHED = frozenset({"qcfractal.config", "qcfractal.db_socket.socket"})


def _hook(name: str, module: ModuleType) -> None:
    value = os.environ.get(ENV, "1").strip().lower()
    kept_out_by = f"{ENV}={os.environ[ENV]}" if value in ("0", "false", "no", "off") else None
    try:
        from qcmb_fractal.plugin.server.hooks import on_qcfractal_module
    except ImportError as err:  # an installation without the server extra, or a broken one
        import logging

        logging.getLogger("qcmb_fractal.autoload").warning("qcmb-fractal's QCFractal plugin cannot load: %s", err)
        return
    on_qcfractal_module(name, module, kept_out_by=kept_out_by)


class _Watcher:
    """A meta path finder that finds nothing itself; it wraps the loader of the watched QCFractal modules."""

    def __init__(self) -> None:
        self.finding: set[str] = set()  # a finder further on that asks importlib again must not come back here

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in WATCHED or fullname in self.finding:
            return None
        self.finding.add(fullname)
        try:
            spec = self._find_elsewhere(fullname, path, target)
        finally:
            self.finding.discard(fullname)
        if spec is None:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_then_hook(module: ModuleType) -> None:
            exec_module(module)
            _hook(fullname, module)

        loader.exec_module = exec_then_hook  # this spec's own loader instance; nothing else shares it
        return spec

    def _find_elsewhere(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None
    ) -> ModuleSpec | None:
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    return spec
        return None


def install() -> None:
    """Put the watcher first in ``sys.meta_path``; idempotent."""
    if not any(isinstance(finder, _Watcher) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Watcher())
