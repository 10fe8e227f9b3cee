"""The one thing pyproject.toml cannot say in a stable way: the byte-plane kernels (cas/_planes.c).

They are compiled at install where a C compiler is; where not, the install goes on without them and
cas/codec.py does their work with numpy (the same frames, more slowly).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("cas._planes", sources=["cas/_planes.c"], optional=True)])
