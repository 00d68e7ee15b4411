# Cross-compiles for 64-bit Windows with Debian's mingw-w64 (package
# mingw-w64), and runs the tests under wine (package wine64):
#
#   cmake -S . -B build/windows \
#         -DCMAKE_TOOLCHAIN_FILE=cmake/toolchain-mingw-w64.cmake
#   cmake --build build/windows && cd build/windows && ctest
#
# `make test-c-windows` does this (and installs both packages when missing).
#
# The compiler is the posix-thread-model one: the C test suites use
# pthreads, which it provides through winpthreads.  The core itself uses
# only Win32 (csrc/src/sync_win32.c).  Programs are linked statically so
# wine needs no MinGW DLL beside them.
set(CMAKE_SYSTEM_NAME Windows)
set(CMAKE_SYSTEM_PROCESSOR x86_64)

set(_cc_triple x86_64-w64-mingw32)
find_program(CMAKE_C_COMPILER NAMES ${_cc_triple}-gcc-posix ${_cc_triple}-gcc REQUIRED)
find_program(CMAKE_CXX_COMPILER NAMES ${_cc_triple}-g++-posix ${_cc_triple}-g++ REQUIRED)
find_program(CMAKE_RC_COMPILER NAMES ${_cc_triple}-windres)

set(CMAKE_FIND_ROOT_PATH /usr/${_cc_triple})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "-static")

# ctest runs every test program through wine.  Debian's wine64 package puts
# the loader in /usr/lib/wine; the wine package adds /usr/bin/wine.
if(NOT CMAKE_CROSSCOMPILING_EMULATOR)
  find_program(CC_WINE NAMES wine64 wine PATHS /usr/lib/wine NO_CMAKE_FIND_ROOT_PATH)
  if(CC_WINE)
    set(CMAKE_CROSSCOMPILING_EMULATOR ${CC_WINE})
  endif()
endif()
