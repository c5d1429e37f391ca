/* Stand-in for tools/testing/selftests/kvm/include/test_util.h (declarations only). */
#ifndef GMEMLAB_STANDIN_TEST_UTIL_H
#define GMEMLAB_STANDIN_TEST_UTIL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void test_assert(bool exp, const char *exp_str, const char *file, unsigned int line,
		 const char *fmt, ...) __attribute__((format(printf, 5, 6)));

#define TEST_ASSERT(e, fmt, ...) test_assert((e), #e, __FILE__, __LINE__, fmt, ##__VA_ARGS__)
#define TEST_ASSERT_EQ(a, b)                                                         \
	do {                                                                         \
		typeof(a) __a = (a);                                                 \
		typeof(b) __b = (b);                                                 \
		test_assert(__a == __b, #a " == " #b, __FILE__, __LINE__, "%#lx != %#lx", \
			    (unsigned long)__a, (unsigned long)__b);                 \
	} while (0)
#define TEST_FAIL(fmt, ...) test_assert(false, "", __FILE__, __LINE__, fmt, ##__VA_ARGS__)
#define TEST_REQUIRE(f) do { if (!(f)) exit(4); } while (0)
#define READ_ONCE(x) (*(const volatile typeof(x) *)&(x))
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* x rounded up to a multiple of size, a power of two. */
uint64_t align_up(uint64_t x, uint64_t size);
void *align_ptr_up(void *x, size_t size);

#endif
