# The Windows build of the core uses Win32 primitives only (sync_win32.c):
# no symbol of a pthreads emulation (winpthreads) may be undefined in the
# static library, whichever compiler thread model built it.  Run by ctest as
# `win32_imports` (cross builds: NM is the toolchain's nm).
execute_process(COMMAND ${NM} -u ${LIB} OUTPUT_VARIABLE out RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} failed on ${LIB}")
endif()
string(REGEX MATCHALL
  "U (__imp_)?(pthread_[a-z_]+|sem_[a-z_]+|sched_[a-z_]+|nanosleep|clock_[a-z_]+|usleep|_pthread_[a-z_]+)"
  bad "${out}")
if(bad)
  list(REMOVE_DUPLICATES bad)
  message(FATAL_ERROR "the core imports pthreads-emulation symbols: ${bad}")
endif()
# Also name every Win32 import, for the log.
string(REGEX MATCHALL "U __imp_[A-Za-z0-9_]+" imports "${out}")
list(REMOVE_DUPLICATES imports)
string(REPLACE "U __imp_" "" imports "${imports}")
message(STATUS "win32 imports: ${imports}")
if(out MATCHES "__emutls_get_address")
  message(STATUS "note: thread-locals go through libgcc's emutls (use cc_tls_get/cc_tls_set)")
endif()
