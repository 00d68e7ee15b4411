/* status.c - names of statuses, and the version linked. */
#include "internal.h"

const char *cc_status_str(cc_status status)
{
    switch (status) {
#define CC_STATUS_NAME_(name, value, meaning) \
    case name:                                \
        return #name;
        CC_STATUS_LIST(CC_STATUS_NAME_)
#undef CC_STATUS_NAME_
    case CC_STATUS_END_:
        break;
    }
    return "CC_E_UNKNOWN";
}

unsigned cc_version_number(void) { return CC_VERSION_NUMBER; }
const char *cc_version_string(void) { return CC_VERSION_STRING; }
