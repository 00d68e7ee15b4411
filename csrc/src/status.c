/* status.c - names of statuses, and the version linked. */
#include "internal.h"

const char *cc_status_str(cc_status status)
{
    switch (status) {
    case CC_OK: return "CC_OK";
    case CC_E_INVALID_ARG: return "CC_E_INVALID_ARG";
    case CC_E_INVALID_OPERATION: return "CC_E_INVALID_OPERATION";
    case CC_E_OBJECT_FAULTED: return "CC_E_OBJECT_FAULTED";
    case CC_E_OPERATION_ABORTED: return "CC_E_OPERATION_ABORTED";
    case CC_E_NOMEM: return "CC_E_NOMEM";
    case CC_E_TIMEOUT: return "CC_E_TIMEOUT";
    }
    return "CC_E_UNKNOWN";
}

unsigned cc_version_number(void) { return CC_VERSION_NUMBER; }
const char *cc_version_string(void) { return CC_VERSION_STRING; }
