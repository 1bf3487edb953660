"""Package layout that pyproject.toml cannot express statically.

The repository keeps the Hydra configs (``conf/``) and the kernel sources (``csrc/``) at the top level,
but an installed (non-editable) ``analogtrain`` must find both, so they are mapped into the package:
``conf/ -> analogtrain.conf`` (loaded by the CLI as ``pkg://analogtrain.conf``) and
``csrc/ -> analogtrain.csrc`` (JIT-compiled at run time from the installed sources).
Metadata, dependencies and the console script live in pyproject.toml.
"""

from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
packages = find_packages(include=["analogtrain", "analogtrain.*"])
package_dir = {"analogtrain": "analogtrain"}
package_data = {"analogtrain.conf": ["*.yaml", "**/*.yaml"]}
for pkg, src, patterns in (
    ("analogtrain.conf", "conf", None),
    # kernel sources are data: headers, C++ and CUDA files, compiled at run time, never by pip
    ("analogtrain.csrc", "csrc", ["*.h", "*.hpp", "*.cuh", "*.cpp", "*.cc", "*.cu", "**/*.h", "**/*.hpp",
                                 "**/*.cuh", "**/*.cpp", "**/*.cc", "**/*.cu", "*.txt", "*.md"]),
):
    if (ROOT / src).is_dir():  # csrc/ may not exist in an early checkout
        packages.append(pkg)
        package_dir[pkg] = src
        if patterns:
            package_data[pkg] = patterns

setup(packages=packages, package_dir=package_dir, package_data=package_data, include_package_data=False)
