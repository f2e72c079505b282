// SPDX-License-Identifier: BSD-3-Clause
#include "boot.h"
#include "console.h"
#include "lapic.h"
#include "lib.h"
#include "smp.h"
#include "stall.h"
#include "svc.h"

#define ICR_INIT		0x00004500u	/* INIT, level assert */
#define ICR_STARTUP		0x00004600u	/* SIPI | vector */
#define ICR_FIXED		0x00004000u	/* fixed, level assert */
#define INIT_WAIT_US		10000		/* the MP spec's waits */
#define SIPI_WAIT_US		200
#define AP_ONLINE_TIMEOUT_US	5000000ull

static volatile uint32_t ap_online[GUEST_MAX_CPUS];
static unsigned int nr_online = 1;

static void wait_us(uint64_t us)
{
	uint64_t end = rdtsc() + us_to_tsc(us);

	while (rdtsc() < end)
		cpu_relax();
}

int smp_start(unsigned int n)
{
	uint64_t len = ap_trampoline_end - ap_trampoline;

	if (n <= 1)
		return 0;
	if (n > GUEST_MAX_CPUS) {
		say("FAIL cpus=%u above the guest's limit %u max_stall_us=0",
		    n, GUEST_MAX_CPUS);
		return -1;
	}
	/* Below 1 MiB, so RAM the workload never allocates. */
	memcpy((void *)AP_TRAMPOLINE_ADDR, ap_trampoline, len);
	for (unsigned int cpu = 1; cpu < n; cpu++) {
		uint64_t t0;

		if (lapic_icr_send(cpu, ICR_INIT) < 0)
			goto no_accept;
		wait_us(INIT_WAIT_US);
		for (int i = 0; i < 2; i++) {
			if (lapic_icr_send(cpu, ICR_STARTUP | AP_SIPI_VECTOR) < 0)
				goto no_accept;
			wait_us(SIPI_WAIT_US);
		}
		t0 = rdtsc();
		while (!__atomic_load_n(&ap_online[cpu], __ATOMIC_ACQUIRE)) {
			if (rdtsc() - t0 > us_to_tsc(AP_ONLINE_TIMEOUT_US)) {
				say("FAIL ap_start cpu=%u: not in ring 3 after "
				    "%llu ms max_stall_us=0", cpu,
				    AP_ONLINE_TIMEOUT_US / 1000);
				return -1;
			}
			cpu_relax();
		}
		nr_online++;
		continue;
no_accept:
		say("FAIL ap_start cpu=%u: the LAPIC did not send the IPI "
		    "max_stall_us=0", cpu);
		return -1;
	}
	return 0;
}

unsigned int smp_cpus(void)
{
	return nr_online;
}

int smp_ipi(unsigned int cpu, unsigned int vector)
{
	return lapic_icr_send(cpu, ICR_FIXED | (vector & 0xff));
}

uint64_t irq_count_cpu(unsigned int cpu, unsigned int vector)
{
	return __atomic_load_n(&irq_counts_cpu[cpu % GUEST_MAX_CPUS]
				[vector & 0xff], __ATOMIC_RELAXED);
}

void smp_idle(void)
{
	svc_call(SVC_IDLE, 0, 0, 0);
}

static volatile int go;

void smp_go(void)
{
	__atomic_store_n(&go, 1, __ATOMIC_RELEASE);
	for (unsigned int cpu = 1; cpu < nr_online; cpu++)
		smp_ipi(cpu, SMP_WAKE_VECTOR);
}

void smp_wait_go(void)
{
	while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
		smp_idle();
}

__attribute__((weak)) int guest_ap_main(unsigned int cpu)
{
	return 0;
}

void ap_user_start(uint64_t cpu)
{
	lapic_enable();		/* software-disabled after INIT: no IPIs */
	__atomic_store_n(&ap_online[cpu], 1, __ATOMIC_RELEASE);
	guest_ap_main(cpu);
	for (;;)
		smp_idle();
}
