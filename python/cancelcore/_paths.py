"""Where the wheel keeps what C embedders need."""

from __future__ import annotations

from importlib import resources


def _dir(*parts: str) -> str:
    return str(resources.files("cancelcore").joinpath(*parts))


def get_include() -> str:
    """The directory holding ``cancelcore.h``."""
    return _dir("include")


def get_library_dir() -> str:
    """The directory holding the static library ``libcancelcore.a``."""
    return _dir("lib")


def get_cmake_dir() -> str:
    """The directory holding ``cancelcoreConfig.cmake`` (for ``cancelcore_DIR``)."""
    return _dir("lib", "cmake", "cancelcore")


def get_pkgconfig_dir() -> str:
    """The directory holding ``cancelcore.pc`` (for ``PKG_CONFIG_PATH``)."""
    return _dir("lib", "pkgconfig")
