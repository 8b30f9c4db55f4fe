// `ellipse study gpt` (docs/study.md): the character corruption (corrupt_characters) and the val loss with a
// context stream and a target stream (evaluate_gpt).
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <vector>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "helpers.hpp"
#include "models/gpt_train.hpp"
#include "models/text.hpp"

using namespace ellipse;
using namespace ellipse::testing;
using Ids = std::vector<std::int64_t>;

namespace {

// n ids cycling through 0..vocab-1 with a stride, so that every character occurs.
Ids cycling_ids(std::size_t n, std::int64_t vocab) {
  Ids ids(n);
  for (std::size_t i = 0; i < n; ++i) ids[i] = static_cast<std::int64_t>((i * 3 + i / 7) % static_cast<std::size_t>(vocab));
  return ids;
}

std::vector<std::size_t> changed_positions(const Ids& a, const Ids& b) {
  std::vector<std::size_t> at;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) at.push_back(i);
  return at;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// corrupt_characters

TEST_CASE("corrupt_characters: exactly round(p N) positions change, to other vocabulary characters") {
  const std::int64_t vocab = 7;
  for (const std::size_t n : {std::size_t{1000}, std::size_t{333}, std::size_t{3}}) {
    const Ids clean = cycling_ids(n, vocab);
    for (const double p : {0.0, 0.015, 0.05, 0.1, 0.5, 1.0}) {
      CAPTURE(n);
      CAPTURE(p);
      const Ids corrupted = corrupt_characters(clean, p, vocab, 42);
      REQUIRE(corrupted.size() == n);
      // Every chosen position gets a different character, so the changed positions are the chosen ones.
      CHECK(changed_positions(clean, corrupted).size() ==
            static_cast<std::size_t>(std::llround(p * static_cast<double>(n))));
      for (const auto id : corrupted) CHECK((id >= 0 && id < vocab));
    }
  }
  // Rounding: 0.5 * 3 = 1.5 rounds to 2; 0.015 * 100 = 1.5 rounds to 2 as well.
  CHECK(changed_positions(cycling_ids(3, 7), corrupt_characters(cycling_ids(3, 7), 0.5, 7, 1)).size() == 2);
  CHECK(changed_positions(cycling_ids(100, 7), corrupt_characters(cycling_ids(100, 7), 0.015, 7, 1)).size() == 2);
  // Two characters: a changed position can only hold the other one.
  const Ids binary = cycling_ids(200, 2);
  const Ids flipped = corrupt_characters(binary, 1.0, 2, 3);
  for (std::size_t i = 0; i < binary.size(); ++i) CHECK(flipped[i] == 1 - binary[i]);
}

TEST_CASE("corrupt_characters: deterministic per seed; positions and replacements uniform") {
  const Ids clean = cycling_ids(60000, 7);
  const Ids a = corrupt_characters(clean, 0.1, 7, 5);
  CHECK(corrupt_characters(clean, 0.1, 7, 5) == a);
  const Ids b = corrupt_characters(clean, 0.1, 7, 6);
  CHECK(b != a);
  CHECK(changed_positions(clean, b) != changed_positions(clean, a));

  // 6000 positions: about half in each half of the text (sd 39), and each of the 6 other characters about a
  // sixth of the replacements of a given original (1000 each, sd 29); 6 sd of slack.
  const auto positions = changed_positions(clean, a);
  const auto first_half = std::count_if(positions.begin(), positions.end(), [](std::size_t i) { return i < 30000; });
  CHECK(std::abs(static_cast<double>(first_half) - 3000.0) < 6 * 39);
  std::array<std::array<int, 7>, 7> counts{};  // [original][replacement]
  for (const auto i : positions) ++counts[static_cast<std::size_t>(clean[i])][static_cast<std::size_t>(a[i])];
  for (std::size_t from = 0; from < 7; ++from) {
    int total = 0;
    for (std::size_t to = 0; to < 7; ++to) total += counts[from][to];
    CHECK(counts[from][from] == 0);
    for (std::size_t to = 0; to < 7; ++to)
      if (to != from) CHECK(std::abs(counts[from][to] - total / 6.0) < 6 * std::sqrt(total / 6.0));
  }
}

TEST_CASE("corrupt_characters: bad arguments name the function and the problem") {
  const Ids ids{0, 1, 2};
  CHECK_ERROR(corrupt_characters(ids, 1.5, 3, 0), "corrupt_characters", "1.5", "[0, 1]");
  CHECK_ERROR(corrupt_characters(ids, -0.1, 3, 0), "corrupt_characters", "-0.1");
  CHECK_ERROR(corrupt_characters(ids, std::nan(""), 3, 0), "corrupt_characters", "nan");
  CHECK_ERROR(corrupt_characters({0, 0}, 0.5, 1, 0), "corrupt_characters", "vocabulary of 1");
  CHECK_ERROR(corrupt_characters(ids, 0.5, 2, 0), "corrupt_characters", "id 2 at position 2", "[0, 2)");
  CHECK(corrupt_characters({}, 0.5, 3, 0).empty());
}

// ---------------------------------------------------------------------------------------------------
// evaluate_gpt with a context and a target stream

TEST_CASE("evaluate_gpt(context, targets): the windows read the context and predict the targets") {
  GPTConfig config = gpt_preset("gpt-tiny", 7);  // T = 32
  config.attention = nn::AttentionKind::elliptical;
  GPT model(config, 3);
  const std::int64_t t = config.seq_len;
  const Ids clean = cycling_ids(static_cast<std::size_t>(3 * t + 5), 7);  // 3 windows; 4 ids left over
  const Ids context = corrupt_characters(clean, 0.2, 7, 9);

  CHECK(evaluate_gpt(model, clean) == evaluate_gpt(model, clean, clean));
  // The same mean by hand: window w reads context[wT, wT + T) and predicts clean[wT + 1, wT + T + 1).
  double expected = 0;
  {
    NoGradGuard no_grad;
    for (std::int64_t w = 0; w < 3; ++w) {
      const auto at = static_cast<std::ptrdiff_t>(w * t);
      const Tensor logits = model.forward(from_vector(Ids(context.begin() + at, context.begin() + at + t), {1, t}));
      expected += cross_entropy(logits, from_vector(Ids(clean.begin() + at + 1, clean.begin() + at + t + 1), {1, t}))
                      .item() / 3;
    }
  }
  const double mixed = evaluate_gpt(model, context, clean, 2);
  CHECK(mixed == doctest::Approx(expected).epsilon(1e-6));
  CHECK(mixed != evaluate_gpt(model, clean, clean));
  CHECK(mixed != evaluate_gpt(model, clean, context));
  // Context beyond the last window's inputs is never read (position 3T is only ever a target).
  Ids longer = context;
  longer[static_cast<std::size_t>(3 * t)] = (longer[static_cast<std::size_t>(3 * t)] + 1) % 7;
  CHECK(evaluate_gpt(model, longer, clean, 2) == mixed);

  CHECK_ERROR(evaluate_gpt(model, context, Ids(clean.begin(), clean.end() - 1)), "eval", "the same length");
}
