// A minimal check macro for the C++ tests (ctest runs each test executable;
// a non-zero exit status fails it).
#pragma once

#include <cstdio>
#include <exception>

namespace dtp_fast_test {
inline int& failures() {
  static int n = 0;
  return n;
}
}  // namespace dtp_fast_test

#define DTP_CHECK(cond)                                                          \
  do {                                                                           \
    if (!(cond)) {                                                               \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++dtp_fast_test::failures();                                               \
    }                                                                            \
  } while (0)

// Runs the named test function, reporting an escaped exception as a failure.
#define DTP_RUN(test)                                                            \
  do {                                                                           \
    const int before = dtp_fast_test::failures();                                \
    try {                                                                        \
      test();                                                                    \
    } catch (const std::exception& e) {                                          \
      std::fprintf(stderr, "%s threw: %s\n", #test, e.what());                   \
      ++dtp_fast_test::failures();                                               \
    }                                                                            \
    std::printf("%s %s\n", dtp_fast_test::failures() == before ? "ok  " : "FAIL", #test); \
  } while (0)
