// Known-answer tests of csrc/philox.h: Philox4x32-10 against the Random123
// vectors, and properties of the Box-Muller step (no torch needed).
#include <cmath>
#include <cstdint>

#include "../philox.h"
#include "check.h"

using dtp_fast::philox::normal4;
using dtp_fast::philox::rounds10;

namespace {

void philox_known_answers() {
  // Random123 kat_vectors: philox4x32_10
  uint32_t zero[4] = {0, 0, 0, 0};
  rounds10(zero, 0, 0);
  DTP_CHECK(zero[0] == 0x6627e8d5u && zero[1] == 0xe169c58du && zero[2] == 0xbc57ac4cu && zero[3] == 0x9b00dbd8u);
  uint32_t ones[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
  rounds10(ones, 0xffffffffu, 0xffffffffu);
  DTP_CHECK(ones[0] == 0x408f276du && ones[1] == 0x41c83b0eu && ones[2] == 0xa20bc7c6u && ones[3] == 0x6d5451fdu);
  uint32_t pi[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u};
  rounds10(pi, 0xa4093822u, 0x299f31d0u);
  DTP_CHECK(pi[0] == 0xd16cfe09u && pi[1] == 0x94fdccebu && pi[2] == 0x5001e420u && pi[3] == 0x24126ea1u);
}

void normals_are_plausible() {
  // mean ~ 0, variance ~ 1 over 2^16 values; every value finite and |x| < 6
  double sum = 0, sq = 0;
  bool finite = true;
  const int blocks = 1 << 14;
  for (int j = 0; j < blocks; ++j) {
    float v[4];
    normal4(static_cast<uint32_t>(j), 7, 3, 1, 0x12345678u, 0x9abcdef0u, v);
    for (float x : v) {
      finite = finite && std::isfinite(x) && std::fabs(x) < 6.0f;
      sum += x;
      sq += static_cast<double>(x) * x;
    }
  }
  const double n = 4.0 * blocks, mean = sum / n, var = sq / n - mean * mean;
  DTP_CHECK(finite);
  DTP_CHECK(std::fabs(mean) < 0.02);
  DTP_CHECK(std::fabs(var - 1.0) < 0.03);
}

void lanes_are_cos_and_sin_of_one_angle() {
  // (r cos t, r sin t): lanes 0, 1 share the radius r1, lanes 2, 3 share r2
  for (uint32_t j = 0; j < 64; ++j) {
    float v[4];
    normal4(j, 0, 0, 0, 1, 2, v);
    uint32_t c[4] = {j, 0, 0, 0};
    rounds10(c, 1, 2);
    const float r1 = dtp_fast::philox::radius(c[0]), r2 = dtp_fast::philox::radius(c[2]);
    DTP_CHECK(std::fabs(std::hypot(v[0], v[1]) - r1) <= 1e-5f * (1 + r1));
    DTP_CHECK(std::fabs(std::hypot(v[2], v[3]) - r2) <= 1e-5f * (1 + r2));
  }
}

}  // namespace

int main() {
  DTP_RUN(philox_known_answers);
  DTP_RUN(normals_are_plausible);
  DTP_RUN(lanes_are_cos_and_sin_of_one_angle);
  return dtp_fast_test::failures() == 0 ? 0 : 1;
}
