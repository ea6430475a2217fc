"""Ship ``qcmb_fractal_autoload.pth`` in site-packages, from wheels and from editable installs alike.

Everything else about the package is in pyproject.toml. The .pth file makes every Python process run
``_qcmb_fractal_autoload.install()`` at start-up, so plain ``qcfractal-server`` commands load the plugin
(see that module). A wheel gets the file through ``build_py``; an editable install (PEP 660) never runs
``build_py`` into its wheel, so the file is added to the editable wheel after it is built.
"""

import base64
import hashlib
import os
import zipfile
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.editable_wheel import editable_wheel

PTH_NAME = "qcmb_fractal_autoload.pth"
# Lines of a .pth that start with "import" are executed; a missing module must not print an error in every process.
PTH_TEXT = (
    'import sys; exec("try:\\n import _qcmb_fractal_autoload\\nexcept ImportError:\\n pass\\n'
    'else:\\n _qcmb_fractal_autoload.install()")\n'
)


class BuildPyWithPth(build_py):
    def run(self) -> None:
        super().run()
        Path(self.build_lib, PTH_NAME).write_text(PTH_TEXT)

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        return [*super().get_outputs(include_bytecode), str(Path(self.build_lib, PTH_NAME))]


class EditableWheelWithPth(editable_wheel):
    def run(self) -> None:
        super().run()
        for wheel in Path(self.dist_dir).glob("*.whl"):
            add_to_wheel(wheel, PTH_NAME, PTH_TEXT.encode())


def add_to_wheel(wheel: Path, name: str, data: bytes) -> None:
    """Add a top-level file to a wheel and to its RECORD, unless it is there already."""
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    rewritten = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(wheel) as source:
        if name in source.namelist():
            return
        with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as target:
            for item in source.infolist():
                payload = source.read(item.filename)
                if item.filename.endswith(".dist-info/RECORD"):
                    payload += f"{name},sha256={digest},{len(data)}\n".encode()
                target.writestr(item, payload)
            target.writestr(name, data)
    os.replace(rewritten, wheel)


setup(cmdclass={"build_py": BuildPyWithPth, "editable_wheel": EditableWheelWithPth})
