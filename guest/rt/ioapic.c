// SPDX-License-Identifier: BSD-3-Clause
#include "ioapic.h"

static inline volatile uint32_t *ioapic_reg(unsigned int off)
{
	return (volatile uint32_t *)(IOAPIC_BASE + off);
}

uint32_t ioapic_read(unsigned int reg)
{
	*ioapic_reg(IOAPIC_REGSEL) = reg;
	return *ioapic_reg(IOAPIC_WIN);
}

void ioapic_write(unsigned int reg, uint32_t val)
{
	*ioapic_reg(IOAPIC_REGSEL) = reg;
	*ioapic_reg(IOAPIC_WIN) = val;
}

unsigned int ioapic_pins(void)
{
	uint32_t ver = ioapic_read(IOAPIC_REG_VER);

	if (ver == 0xffffffffu || ver == 0)
		return 0;	/* nothing decodes the page */
	return ((ver >> 16) & 0xff) + 1;
}

uint32_t ioapic_route(unsigned int pin, unsigned int vector, unsigned int dest,
		      bool level)
{
	uint32_t lo = (vector & IOAPIC_RTE_VECTOR) |
		      (level ? IOAPIC_RTE_LEVEL : 0);

	ioapic_write(IOAPIC_REG_RTE_LO(pin), lo | IOAPIC_RTE_MASKED);
	ioapic_write(IOAPIC_REG_RTE_HI(pin), dest << IOAPIC_RTE_DEST_SHIFT);
	ioapic_write(IOAPIC_REG_RTE_LO(pin), lo);
	return ioapic_read(IOAPIC_REG_RTE_LO(pin));
}
