// Compiled as C++ with nothing before it: the header stands alone.
#include "cancelcore.h"

int cc_header_alone_cxx() {
    cc_cancel_fn fn = nullptr;
    return fn == nullptr ? CC_VERSION_NUMBER : static_cast<int>(CC_CHANNEL_FAULTED);
}
