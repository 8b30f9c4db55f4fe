#pragma once
// A seeded, portable random generator: the same seed gives the same numbers in every run, on every
// compiler and standard library (no std::*_distribution, whose output is implementation-defined).
#include <cstdint>
#include <vector>

#include "tensor.hpp"

namespace ellipse {

class Generator {
 public:
  explicit Generator(std::uint64_t seed = 0) { manual_seed(seed); }
  void manual_seed(std::uint64_t seed);
  std::uint64_t next_u64();   // xoshiro256**
  double uniform();           // [0, 1), 53 random bits
  double normal();            // standard normal, Box-Muller
  std::int64_t integer(std::int64_t bound);  // uniform in [0, bound), unbiased

  // The full state as 6 words, for checkpoints: a generator restored from it continues the same stream.
  std::vector<std::uint64_t> state() const;
  void set_state(const std::vector<std::uint64_t>& words);

 private:
  std::uint64_t state_[4] = {};
  double cached_normal_ = 0.0;
  bool has_cached_normal_ = false;
};

// The process-wide generator used when none is passed. Not thread-safe: pass your own Generator to
// code that runs on several threads.
Generator& default_generator();
void manual_seed(std::uint64_t seed);

// Counter-based hash: a stateless source of random bits for kernels that run in parallel (dropout).
// Same (seed, counter) gives the same bits on every device and thread count.
constexpr std::uint64_t mix64(std::uint64_t seed, std::uint64_t counter) {
  std::uint64_t z = seed + (counter + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

Tensor randn(const Shape& shape, Generator& gen = default_generator(), DType dtype = DType::f32,
             Device device = Device::cpu());
Tensor uniform(const Shape& shape, double low, double high, Generator& gen = default_generator(),
               DType dtype = DType::f32, Device device = Device::cpu());
// Integers uniform in [0, bound), as i64.
Tensor randint(const Shape& shape, std::int64_t bound, Generator& gen = default_generator(),
               Device device = Device::cpu());

}  // namespace ellipse
