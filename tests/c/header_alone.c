/* Compiled as C99 with nothing before it: the header stands alone. */
#include "cancelcore.h"

int cc_header_alone_c(void);
int cc_header_alone_c(void) { return CC_VERSION_NUMBER + (int)CC_HOST_ABORT; }
