/* Stand-in for tools/testing/selftests/kselftest_harness.h: TEST, SKIP, TEST_HARNESS_MAIN. */
#ifndef GMEMLAB_STANDIN_KSELFTEST_HARNESS_H
#define GMEMLAB_STANDIN_KSELFTEST_HARNESS_H

#include <stdio.h>

struct __test_metadata {
	const char *name;
	void (*fn)(struct __test_metadata *);
	int skip;
};

void __register_test(struct __test_metadata *t);
int test_harness_run(int argc, char **argv);

#define TEST(test_name)                                                               \
	static void test_name(struct __test_metadata *_metadata);                     \
	static struct __test_metadata _##test_name##_object = { #test_name, test_name, 0 }; \
	static void __attribute__((constructor)) _register_##test_name(void)          \
	{                                                                             \
		__register_test(&_##test_name##_object);                              \
	}                                                                             \
	static void test_name(struct __test_metadata __attribute__((unused)) *_metadata)

#define SKIP(statement, fmt, ...)                                                     \
	do {                                                                          \
		_metadata->skip = 1;                                                  \
		printf("SKIP " fmt "\n", ##__VA_ARGS__);                              \
		statement;                                                            \
	} while (0)

#define TEST_HARNESS_MAIN                                                             \
	int main(int argc, char **argv) { return test_harness_run(argc, argv); }

#endif
