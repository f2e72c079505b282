/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * Logging to stderr with a per-component prefix and a level. The level is
 * set once at start-up (FERRY_LOG=debug|info|warn|error or
 * log_set_level()). Messages are single lines; callers add the object name
 * (device id, socket path) themselves so a log reads on its own.
 */
#ifndef FERRY_LOG_H
#define FERRY_LOG_H

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_init(const char *prog);
void log_set_level(enum log_level lvl);
enum log_level log_get_level(void);
void log_msg(enum log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

#define pr_debug(...)	log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define pr_info(...)	log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define pr_warn(...)	log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define pr_err(...)	log_msg(LOG_LVL_ERROR, __VA_ARGS__)

#endif /* FERRY_LOG_H */
