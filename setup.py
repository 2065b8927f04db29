"""Build hook: ship the repository's top-level `prompts/`, `seeds/` and `configs/` inside the wheel.

They stay at the top of the repository (the design card's layout, and where people edit them); the wheel
gets a copy under `generator/_data/`, read through `generator/resources.py` with `importlib.resources`.
Why a build hook and not a `package-dir` mapping: a mapped package (`generator._data.prompts` -> `prompts/`)
only imports through setuptools' editable finder, so a checkout run with `PYTHONPATH=.` (the tests, Ray
workers) would not find it. Why not `data-files`: those land outside the package, where
`importlib.resources` cannot see them. An editable install (`pip install -e .`) copies nothing: the package
then reads the checkout's folders directly, so an edited prompt takes effect without reinstalling.
All other settings are in pyproject.toml.
"""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

DATA_KINDS = ("prompts", "seeds", "configs")  # keep in step with generator/resources.py DATA_KINDS
ROOT = Path(__file__).resolve().parent


class build_py_with_data(build_py):  # noqa: N801 - setuptools command naming
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return  # the package reads the checkout itself (generator/resources.py)
        for kind in DATA_KINDS:
            for src in sorted((ROOT / kind).rglob("*")):
                if src.is_file() and "__pycache__" not in src.parts:
                    dest = Path(self.build_lib, "generator", "_data", src.relative_to(ROOT))
                    self.mkpath(str(dest.parent))
                    self.copy_file(str(src), str(dest), preserve_mode=False)


setup(cmdclass={"build_py": build_py_with_data})
