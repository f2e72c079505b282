// SPDX-License-Identifier: BSD-3-Clause
#include "console.h"
#include "pagecheck.h"

static uint64_t page_seed(uint64_t index, uint64_t gen)
{
	uint64_t z = index * 0x9e3779b97f4a7c15ull ^ gen * 0xbf58476d1ce4e5b9ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t gcd(uint64_t a, uint64_t b)
{
	while (b) {
		uint64_t t = a % b;

		a = b;
		b = t;
	}
	return a;
}

uint64_t *pageset_page(const struct pageset *ps, uint64_t index)
{
	return ps->base + index * PAGECHECK_WORDS;
}

void pageset_init(struct pageset *ps, void *base, uint64_t nr)
{
	ps->base = base;
	ps->nr = nr;
	ps->stride = nr > 2 ? (nr * 5 / 8) | 1 : 1;
	while (gcd(ps->stride, nr) != 1)
		ps->stride++;
	ps->pass = 1;
	ps->pos = 0;
	ps->cur = 0;
	ps->rewrites = 0;
}

static void page_write(uint64_t *p, uint64_t index, uint64_t gen)
{
	uint64_t v = page_seed(index, gen) + 3 * PAGECHECK_STEP;

	p[0] = PAGECHECK_MAGIC;
	p[1] = index;
	p[2] = gen;
	for (unsigned int w = 3; w < PAGECHECK_WORDS; w++) {
		p[w] = v;
		v += PAGECHECK_STEP;
	}
}

static int page_verify(const struct pageset *ps, uint64_t index, uint64_t gen,
		       struct page_mismatch *bad)
{
	const volatile uint64_t *p = pageset_page(ps, index);
	uint64_t v = page_seed(index, gen) + 3 * PAGECHECK_STEP;
	uint64_t head[3] = { PAGECHECK_MAGIC, index, gen };
	unsigned int w;
	uint64_t expected = 0;

	for (w = 0; w < 3; w++) {
		if (p[w] != head[w]) {
			expected = head[w];
			goto mismatch;
		}
	}
	for (; w < PAGECHECK_WORDS; w++) {
		if (p[w] != v) {
			expected = v;
			goto mismatch;
		}
		v += PAGECHECK_STEP;
	}
	return 0;

mismatch:
	bad->page = index;
	bad->addr = (uint64_t)p;
	bad->word = w;
	bad->expected = expected;
	bad->found = p[w];
	bad->generation = gen;
	return -1;
}

int pageset_step(struct pageset *ps, struct page_mismatch *bad)
{
	uint64_t index = ps->cur;

	if (ps->pass > 1 && page_verify(ps, index, ps->pass - 1, bad))
		return -1;
	page_write(pageset_page(ps, index), index, ps->pass);
	ps->rewrites++;
	ps->cur += ps->stride;
	if (ps->cur >= ps->nr)
		ps->cur -= ps->nr;
	if (++ps->pos == ps->nr) {
		ps->pos = 0;
		ps->pass++;
	}
	return 0;
}

int pageset_verify_all(const struct pageset *ps, struct page_mismatch *bad)
{
	/* Replay this pass's order from its start: the first pos pages
	 * carry this pass's generation, the rest the previous one. */
	uint64_t index = (ps->cur + ps->nr - (ps->pos * ps->stride) % ps->nr) %
			 ps->nr;

	for (uint64_t j = 0; j < ps->nr; j++) {
		uint64_t gen = j < ps->pos ? ps->pass : ps->pass - 1;

		if (gen && page_verify(ps, index, gen, bad))
			return -1;
		index += ps->stride;
		if (index >= ps->nr)
			index -= ps->nr;
	}
	return 0;
}

void pageset_report(const struct page_mismatch *bad)
{
	say("page %lu (addr 0x%lx) word %u generation %lu: expected 0x%016lx "
	    "found 0x%016lx", bad->page, bad->addr, bad->word,
	    bad->generation, bad->expected, bad->found);
}
