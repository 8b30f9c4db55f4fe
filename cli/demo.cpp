// `ellipse demo`: a small MLP learns three interleaved spirals; the loss it prints falls by two orders.
#include <cmath>
#include <cstdio>
#include <numbers>

#include "cli/commands.hpp"
#include "ellipse.hpp"

namespace ellipse::cli {

namespace {

// Three interleaved spirals in the plane, one class each: not linearly separable, learnable by a small MLP.
std::pair<Tensor, Tensor> make_spirals(std::int64_t per_class, Generator& gen) {
  constexpr std::int64_t kClasses = 3;
  std::vector<float> points;
  std::vector<std::int64_t> labels;
  for (std::int64_t c = 0; c < kClasses; ++c) {
    for (std::int64_t i = 0; i < per_class; ++i) {
      const double r = static_cast<double>(i) / static_cast<double>(per_class);
      const double angle = 4.0 * r + 2.0 * std::numbers::pi * static_cast<double>(c) / kClasses + 0.2 * gen.normal();
      points.push_back(static_cast<float>(r * std::sin(angle)));
      points.push_back(static_cast<float>(r * std::cos(angle)));
      labels.push_back(c);
    }
  }
  const std::int64_t n = kClasses * per_class;
  return {from_vector(points, {n, 2}), from_vector(labels, {n})};
}

class SpiralNet : public nn::Module {
 public:
  explicit SpiralNet(Generator& gen)
      : fc1_(register_module("fc1", std::make_shared<nn::Linear>(2, 64, true, gen))),
        fc2_(register_module("fc2", std::make_shared<nn::Linear>(64, 64, true, gen))),
        out_(register_module("out", std::make_shared<nn::Linear>(64, 3, true, gen))) {}
  Tensor forward(const Tensor& x) const { return out_->forward(gelu(fc2_->forward(gelu(fc1_->forward(x))))); }

 private:
  std::shared_ptr<nn::Linear> fc1_, fc2_, out_;
};

int run_demo(std::int64_t steps, std::uint64_t seed) {
  Generator gen(seed);
  const auto [x, y] = make_spirals(200, gen);
  SpiralNet net(gen);
  nn::AdamW optimizer(net.parameters(), {.lr = 1e-2, .weight_decay = 0.0});
  std::printf("demo: MLP 2-64-64-3 (%lld parameters) on 600 spiral points, AdamW, seed %llu\n",
              static_cast<long long>(net.parameter_count()), static_cast<unsigned long long>(seed));
  double first = 0, last = 0;
  for (std::int64_t step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    const Tensor loss = cross_entropy(net.forward(x), y);
    loss.backward();
    optimizer.step();
    last = loss.item();
    if (step == 0) first = last;
    if (step % 50 == 0 || step + 1 == steps) std::printf("step %4lld  loss %.4f\n", static_cast<long long>(step), last);
  }
  std::printf("loss fell from %.4f to %.4f (%.1fx)\n", first, last, first / last);
  return 0;
}

}  // namespace

void add_demo_command(CLI::App& app, Action& action) {
  auto* demo = app.add_subcommand("demo", "Train a small MLP on synthetic spirals and print the loss");
  auto steps = std::make_shared<std::int64_t>(500);
  auto seed = std::make_shared<std::uint64_t>(0);
  demo->add_option("--steps", *steps, "Training steps")->check(CLI::Range(std::int64_t{1}, std::int64_t{1000000}))
      ->capture_default_str();
  demo->add_option("--seed", *seed, "Random seed")->check(CLI::NonNegativeNumber)->capture_default_str();
  demo->callback([&action, steps, seed] { action = [steps, seed] { return run_demo(*steps, *seed); }; });
}

}  // namespace ellipse::cli
