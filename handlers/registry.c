/*
 * registry.c — the handler table. Adding a handler: a folder under
 * handlers/ with its .c file(s), one `extern` and one line here, and its
 * sources in handlers/CMakeLists.txt. The engine orders them by what they
 * consume and emit; the order here only breaks ties.
 */
#include "handler.h"

extern const struct handler devices_handler;
extern const struct handler orders_handler;
extern const struct handler subscriptions_handler;
extern const struct handler geofence_handler;
extern const struct handler violations_handler;
extern const struct handler alerts_handler;

const struct handler *const handler_table[] = {
    &devices_handler,
    &orders_handler,
    &subscriptions_handler,
    &geofence_handler,
    &violations_handler,
    &alerts_handler,
    NULL,
};
