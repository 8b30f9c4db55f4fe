// Research-facing pieces of nn above the ops: state dicts, converting a whole model's dtype (and gradchecking
// it in f64), shuffled mini-batches, and training checkpoints of optimizers (AdamW, SGD) with parameter groups.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/io/safetensors.hpp"
#include "helpers.hpp"
#include "models/checkpoint.hpp"
#include "nn/data.hpp"
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

TEST_CASE("ShuffledBatches: every row once per pass, rows of the tensors paired, a fresh order each pass") {
  for (const auto& d : available_devices()) {
    CAPTURE(d.device.str());
    // Row i of x is (i, -i) in f32; row i of the labels is i in i64.
    std::vector<float> rows;
    for (int i = 0; i < 10; ++i) rows.insert(rows.end(), {static_cast<float>(i), static_cast<float>(-i)});
    const Tensor x = from_vector(rows, {10, 2}).to(d.device);
    const Tensor labels = arange(0, 10, 1, DType::i64).to(d.device);
    Generator gen(5);
    nn::ShuffledBatches batches({x, labels}, 4, gen);
    CHECK(batches.size() == 3);
    CHECK(batches.rows() == 10);

    std::vector<std::vector<std::int64_t>> orders;
    for (int pass = 0; pass < 3; ++pass) {
      std::vector<std::int64_t> order, sizes;
      for (const std::vector<Tensor>& batch : batches) {
        REQUIRE(batch.size() == 2);
        CHECK(batch[0].device() == d.device);
        CHECK(batch[1].dtype() == DType::i64);
        sizes.push_back(batch[1].shape()[0]);
        const auto ids = batch[1].to(Device::cpu()).to_vector<std::int64_t>();
        const auto xs = batch[0].to(Device::cpu()).to_vector<float>();
        for (std::size_t r = 0; r < ids.size(); ++r) {
          CHECK(xs[2 * r] == static_cast<float>(ids[r]));  // the same row of both tensors
          CHECK(xs[2 * r + 1] == -static_cast<float>(ids[r]));
        }
        order.insert(order.end(), ids.begin(), ids.end());
      }
      CHECK(sizes == std::vector<std::int64_t>{4, 4, 2});
      std::vector<std::int64_t> sorted = order;
      std::sort(sorted.begin(), sorted.end());
      CHECK(sorted == labels.to(Device::cpu()).to_vector<std::int64_t>());
      orders.push_back(order);
    }
    CHECK(orders[0] != orders[1]);
    CHECK(orders[1] != orders[2]);

    // The same seed gives the same passes; drop_last leaves out the short batch.
    Generator again(5);
    nn::ShuffledBatches replay({x, labels}, 4, again, /*drop_last=*/true);
    CHECK(replay.size() == 2);
    std::vector<std::int64_t> first_pass;
    for (const auto& batch : replay) {
      CHECK(batch[1].shape()[0] == 4);
      for (const auto id : batch[1].to(Device::cpu()).to_vector<std::int64_t>()) first_pass.push_back(id);
    }
    CHECK(first_pass == std::vector<std::int64_t>(orders[0].begin(), orders[0].begin() + 8));
  }
  // Every order of 3 rows turns up (a shuffle that must move every row, say, would never keep one in place).
  Generator seeded(7);
  nn::ShuffledBatches three({arange(0, 3, 1, DType::i64)}, 3, seeded);
  std::set<std::vector<std::int64_t>> seen;
  for (int pass = 0; pass < 60; ++pass)
    for (const auto& batch : three) seen.insert(batch[0].to_vector<std::int64_t>());
  CHECK(seen.size() == 6);

  // A batch as large as the data is one batch; rows without a gradient history whatever the input has.
  Generator gen(6);
  const Tensor w = ones({3, 2}).requires_grad_();
  nn::ShuffledBatches whole({w}, 8, gen);
  CHECK(whole.size() == 1);
  for (const auto& batch : whole) {
    CHECK(batch[0].shape() == Shape{3, 2});
    CHECK_FALSE(batch[0].requires_grad());
  }
  nn::ShuffledBatches none({w}, 8, gen, /*drop_last=*/true);
  CHECK(none.size() == 0);
  CHECK(none.begin() == none.end());
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

TEST_CASE("training checkpoints hold any optimizer's buffers under its names, and refuse another kind") {
  testing::TempDir dir;
  const auto reversed = [](const nn::MLP& m) {
    auto params = m.parameters();
    std::reverse(params.begin(), params.end());  // fc2.bias, fc2.weight, fc1.bias, fc1.weight
    return params;
  };
  Generator gen(10);
  nn::MLP model(3, 4, gen);
  nn::SGD sgd(reversed(model), {.lr = 0.1, .momentum = 0.9});
  CHECK(sgd.name() == "SGD");
  CHECK(sgd.buffer_names() == std::vector<std::string>{"momentum_buffer"});
  train_step(model, sgd);
  train_step(model, sgd);
  const std::string path = dir / "sgd.safetensors";
  save_train_state(path, model, sgd, TrainState{.step = 2, .generators = {}, .fields = {{"flags", "sgd"}}});
  const auto file = io::load_safetensors(path);
  CHECK(file.metadata.at("optimizer") == "SGD");
  std::set<std::string> names;
  for (const auto& [name, tensor] : file.tensors) names.insert(name);
  CHECK(names == std::set<std::string>{"param.fc1.weight", "param.fc1.bias", "param.fc2.weight", "param.fc2.bias",
                                       "momentum_buffer.fc1.weight", "momentum_buffer.fc1.bias",
                                       "momentum_buffer.fc2.weight", "momentum_buffer.fc2.bias"});
  const auto state = sgd.state();  // one buffer per parameter, in the optimizer's (reversed) order
  for (const auto& [name, tensor] : file.tensors)
    if (name == "momentum_buffer.fc1.weight") CHECK(values(tensor) == values(state[3]));

  Generator other(11);
  nn::MLP resumed(3, 4, other);
  nn::SGD resumed_sgd(reversed(resumed), {.lr = 0.1, .momentum = 0.9});
  const TrainState loaded = load_train_state(path, resumed, resumed_sgd);
  CHECK(loaded.step == 2);
  CHECK(loaded.fields == std::map<std::string, std::string>{{"flags", "sgd"}});  // the optimizer's kind is not a field
  CHECK(resumed_sgd.steps() == 2);
  train_step(model, sgd);
  train_step(resumed, resumed_sgd);
  CHECK(snapshot(resumed) == snapshot(model));

  // Without momentum SGD keeps no buffers: the file holds the parameters alone.
  nn::SGD plain(model.parameters(), {.lr = 0.1});
  save_train_state(dir / "plain.safetensors", model, plain, {});
  CHECK(io::load_safetensors(dir / "plain.safetensors").tensors.size() == 4);

  // Another kind of optimizer is refused before anything changes.
  nn::AdamW adamw(resumed.parameters());
  const auto before = snapshot(resumed);
  CHECK_ERROR(load_train_state(path, resumed, adamw), path, "holds an SGD optimizer's state, not one of AdamW");
  CHECK(snapshot(resumed) == before);
  // A state written before the kind was recorded is AdamW's: it loads into an AdamW, and its tensor names refuse SGD.
  save_train_state(dir / "adamw.safetensors", resumed, adamw, {});
  auto old = io::load_safetensors(dir / "adamw.safetensors");
  old.metadata.erase("optimizer");
  const std::string old_path = dir / "old.safetensors";
  io::save_safetensors(old_path, old.tensors, old.metadata);
  CHECK(load_train_state(old_path, resumed, adamw).step == 0);
  CHECK_ERROR(load_train_state(old_path, resumed, resumed_sgd), old_path, "'adam_m.");

  // A buffer name must map to one tensor name per parameter; the kind needs a name, the decay a sensible value.
  struct Named : nn::Optimizer {
    Named(std::vector<Tensor> parameters, std::vector<std::string> buffers, std::string name = "Named",
          double default_decay = 0.0)
        : Optimizer(std::move(name), {{.parameters = std::move(parameters)}}, 0.1, std::move(buffers),
                    [default_decay](const Tensor&) { return default_decay; }) {}
    void step() override {}
  };
  CHECK_ERROR(Named(model.parameters(), {}, ""), "Optimizer: expected a name");
  for (const double decay : {-1.0, std::nan("")})
    CHECK_ERROR(Named(model.parameters(), {}, "Named", decay), "Named: the default weight decay of a parameter",
                "expected a finite value >= 0");
  CHECK(Named(model.parameters(), {"a", "b"}).state().size() == 8);
  for (const std::vector<std::string>& bad : std::vector<std::vector<std::string>>{{"param"}, {"a", "a"}, {""},
                                                                                   {"a.b"}})
    CHECK_ERROR(Named(model.parameters(), bad), "Named: buffer names must be unique", "not 'param'");

  // The names the state keeps for itself are not fields.
  for (const std::string key : {"step", "optimizer", "optimizer_steps", "generator.data"})
    CHECK_ERROR(save_train_state(dir / "bad.safetensors", model, sgd, TrainState{.step = 1, .generators = {},
                                                                                 .fields = {{key, "1"}}}),
                "save_train_state", "'" + key + "'", "keeps for itself");
  CHECK_FALSE(std::filesystem::exists(dir / "bad.safetensors"));
}
