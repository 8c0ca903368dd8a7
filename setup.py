"""Build hook: the wheel carries the equipment profiles (adapters/) and the example configs (config/).

They live at the top of the checkout, where users and docs expect them; a wheel needs them inside the
package, so `build_py` copies them to `emsedge/data/`. An editable install reads the checkout's folders
directly (emsedge.packaged), so nothing is copied there. Metadata stays in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED = ("adapters", "config")


class BuildPyWithData(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED:
            target = Path(self.build_lib) / "emsedge" / "data" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("*.db*", "__pycache__"))


setup(cmdclass={"build_py": BuildPyWithData})
