/* api -- entry points that exist only for the library's users: the version of the library
 * linked (dsacp_version.h's macros are the headers' version). Calls nothing else in dsacp. */
#include "dsacp.h"

const char *dsacp_version(void)
{
    return DSACP_VERSION;
}
