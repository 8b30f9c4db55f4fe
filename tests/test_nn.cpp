// Research-facing pieces of nn above the ops: training checkpoints of optimizers with parameter groups.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "nn/layers.hpp"
#include "nn/optim.hpp"

using namespace ellipse;

namespace {

using ellipse::testing::available_devices;

std::vector<double> values(const Tensor& t) { return t.to(DType::f64).to(Device::cpu()).to_vector<double>(); }

// Every parameter's values, in order.
std::vector<std::vector<double>> snapshot(const nn::Module& module) {
  std::vector<std::vector<double>> out;
  for (const auto& p : module.parameters()) out.push_back(values(p));
  return out;
}

// One optimizer step on a fixed loss, so that the parameters and the optimizer's state move.
void train_step(nn::MLP& model, nn::Optimizer& optimizer) {
  Generator gen(7);
  const Tensor x = randn({5, 3}, gen, model.parameter("fc1.weight").dtype(), model.device());
  optimizer.zero_grad();
  mean(pow(model.forward(x), 2.0)).backward();
  optimizer.step();
}

}  // namespace

TEST_CASE("training checkpoints pair each parameter with its moments whatever order the groups give them") {
  testing::TempDir dir;
  // The groups hold the parameters in another order than the model's: fc2's first, then fc1's reversed.
  const auto grouped = [](const nn::MLP& m) {
    return std::vector<nn::ParamGroup>{
        {.parameters = {m.parameter("fc2.weight"), m.parameter("fc2.bias")}, .lr_scale = 0.5},
        {.parameters = {m.parameter("fc1.bias"), m.parameter("fc1.weight")}}};
  };
  Generator gen(8);
  nn::MLP model(3, 4, gen);
  nn::AdamW optimizer(grouped(model), {.lr = 0.1});
  train_step(model, optimizer);
  train_step(model, optimizer);
  const std::string path = dir / "state.safetensors";
  save_train_state(path, model, optimizer, TrainState{.step = 2, .generators = {}, .fields = {}});
  const auto file = io::load_safetensors(path);
  const auto stored = [&](const std::string& key) {
    for (const auto& [name, tensor] : file.tensors)
      if (name == key) return values(tensor);
    FAIL("no tensor ", key);
    return std::vector<double>{};
  };
  const auto state = optimizer.state();  // [m, v] of fc2.weight, fc2.bias, fc1.bias, fc1.weight
  CHECK(stored("adam_m.fc1.weight") == values(state[6]));
  CHECK(stored("adam_v.fc2.bias") == values(state[3]));

  Generator other(9);
  nn::MLP resumed(3, 4, other);
  nn::AdamW resumed_optimizer(grouped(resumed), {.lr = 0.1});
  CHECK(load_train_state(path, resumed, resumed_optimizer).step == 2);
  CHECK(snapshot(resumed) == snapshot(model));
  const auto resumed_state = resumed_optimizer.state();
  for (std::size_t i = 0; i < state.size(); ++i) CHECK(values(resumed_state[i]) == values(state[i]));
  train_step(model, optimizer);
  train_step(resumed, resumed_optimizer);
  CHECK(snapshot(resumed) == snapshot(model));

  // An optimizer must hold exactly the model's parameters to be saved or loaded with it.
  const auto params = model.parameters();
  nn::AdamW partial({params[0], params[1], params[2]});
  CHECK_ERROR(save_train_state(dir / "partial.safetensors", model, partial, {}), "save_train_state",
              "holds 3 parameters", "the model 4");
  nn::AdamW foreign({params[0], params[1], params[2], resumed.parameter("fc2.bias")});
  CHECK_ERROR(load_train_state(path, model, foreign), "load_train_state", "does not hold", "'fc2.bias'");
}
