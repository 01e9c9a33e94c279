"""Packaging for geventbev (setuptools)."""

from __future__ import annotations

import pathlib
import re

from setuptools import find_packages, setup

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "geventbev" / "__init__.py").read_text(), re.M
).group(1)

setup(
    name="geventbev",
    version=VERSION,
    description="libevent's bufferevents for gevent: buffered socket connections "
    "with callbacks, watermarks and timeouts, a blocking style, and a TCP relay",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["geventbev", "geventbev.*"]),
    package_data={"geventbev": ["py.typed"]},
    python_requires=">=3.9",
    install_requires=["gevent>=22.10", "pyOpenSSL>=23.0"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6"],
        "lint": ["ruff>=0.4"],
    },
    entry_points={"console_scripts": ["geventbev=geventbev.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3 :: Only",
        "Framework :: gevent",
        "Topic :: System :: Networking",
        "License :: OSI Approved :: MIT License",
    ],
    license="MIT",
)
