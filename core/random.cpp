#include "core/random.hpp"

#include <cmath>
#include <cstring>
#include <numbers>

#include "core/error.hpp"

namespace ellipse {

namespace {
std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
}  // namespace

void Generator::manual_seed(std::uint64_t seed) {
  // Expand the seed with splitmix64, as the xoshiro authors recommend.
  for (int i = 0; i < 4; ++i) state_[i] = mix64(seed, static_cast<std::uint64_t>(i));
  has_cached_normal_ = false;
}

std::uint64_t Generator::next_u64() {
  const std::uint64_t result = rotl(state_[1] * 5, 7) * 9;
  const std::uint64_t t = state_[1] << 17;
  state_[2] ^= state_[0];
  state_[3] ^= state_[1];
  state_[1] ^= state_[2];
  state_[0] ^= state_[3];
  state_[2] ^= t;
  state_[3] = rotl(state_[3], 45);
  return result;
}

double Generator::uniform() { return static_cast<double>(next_u64() >> 11) * 0x1.0p-53; }

double Generator::normal() {
  if (has_cached_normal_) {
    has_cached_normal_ = false;
    return cached_normal_;
  }
  const double u1 = 1.0 - uniform();  // (0, 1]: log is finite
  const double u2 = uniform();
  const double radius = std::sqrt(-2.0 * std::log(u1));
  cached_normal_ = radius * std::sin(2.0 * std::numbers::pi * u2);
  has_cached_normal_ = true;
  return radius * std::cos(2.0 * std::numbers::pi * u2);
}

std::int64_t Generator::integer(std::int64_t bound) {
  ELLIPSE_CHECK(bound > 0, "Generator::integer: bound must be positive, got {}", bound);
  const auto range = static_cast<std::uint64_t>(bound);
  const std::uint64_t limit = UINT64_MAX - UINT64_MAX % range;  // reject the biased tail
  std::uint64_t x;
  do x = next_u64();
  while (x >= limit);
  return static_cast<std::int64_t>(x % range);
}

std::vector<std::uint64_t> Generator::state() const {
  std::uint64_t cached_bits;
  std::memcpy(&cached_bits, &cached_normal_, sizeof cached_bits);
  return {state_[0], state_[1], state_[2], state_[3], has_cached_normal_ ? 1u : 0u, cached_bits};
}

void Generator::set_state(const std::vector<std::uint64_t>& words) {
  ELLIPSE_CHECK(words.size() == 6 && words[4] <= 1 && (words[0] | words[1] | words[2] | words[3]) != 0,
                "Generator::set_state: expected 6 words from Generator::state(), got {} words", words.size());
  for (int i = 0; i < 4; ++i) state_[i] = words[static_cast<std::size_t>(i)];
  has_cached_normal_ = words[4] == 1;
  std::memcpy(&cached_normal_, &words[5], sizeof cached_normal_);
}

Generator& default_generator() {
  static Generator generator(0);
  return generator;
}

void manual_seed(std::uint64_t seed) { default_generator().manual_seed(seed); }

namespace {
template <class Draw>
Tensor host_random(const Shape& shape, DType dtype, Device device, Draw draw) {
  ELLIPSE_CHECK(is_floating(dtype), "random: expected a floating dtype, got {}", dtype_name(dtype));
  std::vector<double> values(static_cast<std::size_t>(numel(shape)));
  for (auto& v : values) v = draw();
  return from_vector(values, shape, device).to(dtype);
}
}  // namespace

Tensor randn(const Shape& shape, Generator& gen, DType dtype, Device device) {
  return host_random(shape, dtype, device, [&] { return gen.normal(); });
}

Tensor uniform(const Shape& shape, double low, double high, Generator& gen, DType dtype, Device device) {
  ELLIPSE_CHECK(low <= high, "uniform: low ({}) must not exceed high ({})", low, high);
  return host_random(shape, dtype, device, [&] { return low + (high - low) * gen.uniform(); });
}

Tensor randint(const Shape& shape, std::int64_t bound, Generator& gen, Device device) {
  std::vector<std::int64_t> values(static_cast<std::size_t>(numel(shape)));
  for (auto& v : values) v = gen.integer(bound);
  return from_vector(values, shape, device);
}

}  // namespace ellipse
