// SPDX-License-Identifier: BSD-3-Clause
#include "boot.h"
#include "lapic.h"

static inline volatile uint32_t *lapic_reg(unsigned int off)
{
	return (volatile uint32_t *)(LAPIC_BASE + off);
}

void lapic_enable(void)
{
	*lapic_reg(LAPIC_TPR) = 0;
	*lapic_reg(LAPIC_SVR) = LAPIC_SVR_ENABLE | SPURIOUS_VECTOR;
}

uint32_t lapic_id(void)
{
	return *lapic_reg(LAPIC_ID) >> 24;
}

uint64_t irq_count(unsigned int vector)
{
	return __atomic_load_n(&irq_counts[vector & 0xff], __ATOMIC_RELAXED);
}

void irq_set_hook(unsigned int vector, void (*hook)(unsigned int vector,
						    unsigned int cpu))
{
	__atomic_store_n(&irq_hooks[vector & 0xff], hook, __ATOMIC_RELEASE);
}

#define ICR_SPIN_MAX	1000000u

int lapic_icr_send(uint32_t dest, uint32_t icr_lo)
{
	*lapic_reg(LAPIC_ICR_HI) = dest << 24;
	*lapic_reg(LAPIC_ICR_LO) = icr_lo;
	for (unsigned int spin = 0; spin < ICR_SPIN_MAX; spin++)
		if (!(*lapic_reg(LAPIC_ICR_LO) & LAPIC_ICR_PENDING))
			return 0;
	return -1;
}
