# The PyTorch ecosystem's build of dftune_torch (torch.utils.cpp_extension), beside the CMake one:
#   /usr/bin/python3 -m pip install --no-build-isolation ./python
# builds the same translation unit (src/module.cpp) against the torch that this Python imports, and
# installs the package dftune_torch (its compiled module dftune_torch._C). --no-build-isolation: the
# build must see the installed torch (an isolated build would download another one). Needs a C++20
# compiler, Eigen 3.4 (pkg-config eigen3, else /usr/include/eigen3) and OpenMP (optional).
import os
import re
import shlex
import subprocess

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

here = os.path.dirname(os.path.abspath(__file__))
include = os.path.join(os.path.dirname(here), "include")


def version():
    text = open(os.path.join(include, "dftune", "version.hpp")).read()
    parts = [re.search(r"#define DFTUNE_VERSION_%s (\d+)" % k, text).group(1) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(parts)


def eigen_flags():
    try:
        out = subprocess.run(["pkg-config", "--cflags", "eigen3"], capture_output=True, text=True, check=True).stdout
        return shlex.split(out)
    except (OSError, subprocess.CalledProcessError):
        return ["-I/usr/include/eigen3"]


setup(
    name="dftune_torch",
    version=version(),
    description="Discriminative Fine-Tuning (arXiv 2502.18679) objectives and log-prob reductions for PyTorch",
    packages=["dftune_torch"],
    package_data={"dftune_torch": ["_C.pyi", "py.typed"]},
    ext_modules=[
        CppExtension(
            "dftune_torch._C",
            ["src/module.cpp"],
            include_dirs=[include],
            extra_compile_args=["-std=c++20", "-O2", "-fopenmp", "-Wall", "-Wextra"] + eigen_flags(),
            extra_link_args=["-fopenmp"],
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
