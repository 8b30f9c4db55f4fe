// Research-facing pieces of nn above the ops: state dicts, converting a whole model's dtype (and gradchecking
// it in f64), and training checkpoints of optimizers with parameter groups.
#include <doctest/doctest.h>

#include <algorithm>
#include <set>
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

TEST_CASE("state_dict: detached copies by name that later training leaves alone; load_state_dict restores them") {
  for (const auto& d : available_devices()) {
    CAPTURE(d.device.str());
    Generator gen(1);
    nn::MLP model(3, 4, gen);
    model.to(d.device);
    const nn::StateDict saved = model.state_dict();
    const std::vector<std::string> names = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
    REQUIRE(saved.size() == names.size());
    for (std::size_t i = 0; i < saved.size(); ++i) {
      CHECK(saved[i].first == names[i]);
      CHECK_FALSE(saved[i].second.requires_grad());
      CHECK(saved[i].second.device() == d.device);
      CHECK(saved[i].second.storage() != model.parameter(names[i]).storage());
    }
    const auto before = snapshot(model);
    nn::AdamW optimizer(model.parameters(), {.lr = 0.1});
    train_step(model, optimizer);
    const auto trained = snapshot(model);
    CHECK(trained != before);
    for (std::size_t i = 0; i < saved.size(); ++i) CHECK(values(saved[i].second) == before[i]);

    // Loading writes into the parameters themselves: a handle taken earlier sees the restored values, and the
    // optimizer still trains the model's tensors.
    const Tensor fc1 = model.parameter("fc1.weight");
    const Storage* storage = fc1.storage().get();
    const nn::IncompatibleNames skipped = model.load_state_dict(saved);
    CHECK(skipped.missing.empty());
    CHECK(skipped.unexpected.empty());
    CHECK(snapshot(model) == before);
    CHECK(fc1.storage().get() == storage);
    CHECK(values(fc1) == before[0]);
    train_step(model, optimizer);
    CHECK(values(fc1) != before[0]);

    // A dict made on the CPU loads onto the model's device.
    nn::StateDict on_cpu;
    for (const auto& [name, value] : saved) on_cpu.emplace_back(name, value.to(Device::cpu()));
    model.load_state_dict(on_cpu);
    CHECK(snapshot(model) == before);
  }
}

TEST_CASE("load_state_dict: all or nothing; names, shapes and dtypes are checked first; non-strict skips names") {
  Generator gen(2);
  nn::MLP model(3, 4, gen), other(3, 4, gen);
  const auto before = snapshot(model);
  nn::StateDict dict = other.state_dict();

  // The last entry is wrong: nothing may have been copied from the good ones before it.
  nn::StateDict wrong_shape = dict;
  wrong_shape.back().second = zeros({5});
  CHECK_ERROR(model.load_state_dict(wrong_shape), "Module::load_state_dict", "'fc2.bias'", "[5]", "f32 [3]");
  nn::StateDict wrong_dtype = dict;
  wrong_dtype.back().second = zeros({3}, DType::f64);
  CHECK_ERROR(model.load_state_dict(wrong_dtype), "Module::load_state_dict", "'fc2.bias'", "f64 [3]", "f32 [3]");
  nn::StateDict renamed = dict;
  renamed[1].first = "fc1.biases";
  renamed.emplace_back("extra", zeros({1}));
  CHECK_ERROR(model.load_state_dict(renamed), "Module::load_state_dict", "missing: 'fc1.bias'",
              "unexpected: 'fc1.biases', 'extra'");
  nn::StateDict twice = dict;
  twice.push_back(dict.front());
  CHECK_ERROR(model.load_state_dict(twice), "Module::load_state_dict", "'fc1.weight'", "twice");
  CHECK(snapshot(model) == before);

  // Not strict: the names that match are loaded and the others returned; shapes are still checked.
  const nn::IncompatibleNames skipped = model.load_state_dict(renamed, /*strict=*/false);
  CHECK(skipped.missing == std::vector<std::string>{"fc1.bias"});
  CHECK(skipped.unexpected == std::vector<std::string>{"fc1.biases", "extra"});
  const auto loaded = snapshot(model), wanted = snapshot(other);
  CHECK(loaded[0] == wanted[0]);
  CHECK(loaded[1] == before[1]);
  CHECK(loaded[2] == wanted[2]);
  CHECK(loaded[3] == wanted[3]);
  CHECK_ERROR(model.load_state_dict(wrong_shape, false), "'fc2.bias'", "[5]");
}

TEST_CASE("Module::to(DType): every parameter converted in place, handles follow, gradients dropped") {
  Generator gen(3);
  nn::MLP model(3, 4, gen);
  nn::SGD optimizer(model.parameters(), {.lr = 0.1});
  train_step(model, optimizer);
  const Tensor fc2 = model.parameter("fc2.weight");
  REQUIRE(fc2.grad().defined());
  const auto before = snapshot(model);

  CHECK(&model.to(DType::f64) == &model);
  for (const auto& p : model.parameters()) {
    CHECK(p.dtype() == DType::f64);
    CHECK(p.requires_grad());
    CHECK(p.is_contiguous());
    CHECK_FALSE(p.grad().defined());
  }
  CHECK(fc2.dtype() == DType::f64);
  CHECK(snapshot(model) == before);  // f32 to f64 is exact
  const Tensor x = randn({2, 3}, gen, DType::f64);
  CHECK(model.forward(x).dtype() == DType::f64);  // the layers read the converted members

  // The optimizer built for f32 refuses to mix its state with the converted parameters.
  train_step(model, optimizer);  // no momentum: no state, so SGD still works
  nn::AdamW adamw(model.parameters());
  model.to(DType::f32);
  CHECK(snapshot(model) != before);
  optimizer.zero_grad();
  sum(model.forward(x.to(DType::f32))).backward();
  CHECK_ERROR(adamw.step(), "AdamW::step", "f32", "f64", "Module::to");

  CHECK_ERROR(model.to(DType::i64), "Module::to", "floating", "i64");
  CHECK(fc2.dtype() == DType::f32);
}

TEST_CASE("Module::to(DType::f64): a whole model passes gradcheck on its parameters") {
  Generator gen(4);
  nn::MLP model(3, 5, gen);
  model.to(DType::f64);
  const Tensor x = randn({4, 3}, gen, DType::f64);
  // gradcheck perturbs the parameters' storage in place; the forward reads the same tensors.
  const auto forward = [&](const std::vector<Tensor>&) { return model.forward(x); };
  // The step and tolerance docs/api.md recommends (measured: 4e-9 here).
  const GradcheckResult result = gradcheck(forward, model.parameters(), {.step = 1e-5});
  INFO(result.worst);
  CHECK(result.max_error < 1e-6);
}

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
