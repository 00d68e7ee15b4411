# The cffi extension generated at build time from cancelcore.h.
from typing import Any

ffi: Any
lib: Any
