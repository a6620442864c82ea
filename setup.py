"""fitkit's build script.

Everything declarative lives in ``setup.cfg``; this file only maps the top-level ``priors/``
folder (the open pose priors) into the installed package as ``fitkit.open_priors``, so that
``fitkit.priors.load("gmm")`` finds them after a non-editable ``pip install .`` too.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["fitkit", "fitkit.*"]) + ["fitkit.open_priors"],
    package_dir={"fitkit": "fitkit", "fitkit.open_priors": "priors"},
)
