/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * USDT trace points (systemtap-sdt-dev's <sys/sdt.h>): free when nobody
 * listens, visible to `perf probe sdt_ferry:*`, bpftrace and systemtap.
 *	FERRY_TRACE(name, args...)	up to 6 integer/pointer args
 * List them with: readelf -n build/ferry-dev | grep -A2 stapsdt
 */
#ifndef FERRY_TRACE_H
#define FERRY_TRACE_H

/* STAP_PROBEV (variadic probes) exists only with this defined. */
#ifndef SDT_USE_VARIADIC
#define SDT_USE_VARIADIC 1
#endif
#include <sys/sdt.h>

#define FERRY_TRACE(...)	DTRACE_PROBE_N_(__VA_ARGS__)
#define DTRACE_PROBE_N_(name, ...)	STAP_PROBEV(ferry, name, ##__VA_ARGS__)

#endif /* FERRY_TRACE_H */
