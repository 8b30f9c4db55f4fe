// Composition and extension of modules: Sequential and Lambda through the virtual Layer::forward, forward hooks
// that read and replace outputs, and attention kinds registered by research code going into the library's
// block, GPT and ViT, their checkpoints and the study probe.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "autograd/ops.hpp"
#include "helpers.hpp"
#include "core/io/file.hpp"
#include "core/io/safetensors.hpp"
#include "models/gpt.hpp"
#include "models/gpt_train.hpp"
#include "models/train_run.hpp"
#include "models/vit.hpp"
#include "nn/analysis.hpp"
#include "nn/optim.hpp"

using namespace ellipse;

namespace {

// A kind of attention of this test's own: every query attends uniformly to the keys it may see (no scores at
// all), then the usual output projection. Its values go to the next layer like a built-in layer's.
class UniformAttention : public nn::AttentionLayer {
 public:
  explicit UniformAttention(const nn::AttentionSlot& slot) : heads_(slot.heads), dim_(slot.dim) {
    value_ = register_module("value", std::make_shared<nn::Linear>(slot.dim, slot.dim, true, *slot.gen, slot.init));
    proj_ = register_module("proj", std::make_shared<nn::Linear>(slot.dim, slot.dim, true, *slot.gen, slot.init));
  }

  nn::AttentionOutput forward(const Tensor& x, bool causal, const Tensor&, nn::KVCache* cache) override {
    ELLIPSE_CHECK(cache == nullptr, "UniformAttention: no incremental decoding");
    const std::int64_t batch = x.shape()[0], n = x.shape()[1], head_dim = dim_ / heads_;
    const Tensor v = permute(view(value_->forward(x), {batch, n, heads_, head_dim}), {0, 2, 1, 3});
    const Tensor probs = scaled_softmax(zeros({batch, heads_, n, n}, x.dtype(), x.device()), 1.0, causal);
    if (keeps_attention()) record_attention(probs);
    const Tensor out = reshape(permute(matmul(probs, v), {0, 2, 1, 3}), {batch, n, dim_});
    return {hooked(proj_->forward(out)), v};
  }
  bool decodes_incrementally() const override { return false; }

 private:
  std::int64_t heads_, dim_;
  std::shared_ptr<nn::Linear> value_, proj_;
};

// Registered once per test program (the registry is global; a second registration of a name is an error).
const std::string& uniform_kind() {
  static const std::string name = [] {
    nn::register_attention("test-uniform",
                           [](const nn::AttentionSlot& slot) { return std::make_shared<UniformAttention>(slot); });
    return std::string("test-uniform");
  }();
  return name;
}

GPTConfig tiny_gpt(const std::string& attention) {
  GPTConfig c = gpt_preset("gpt-tiny", 12);
  c.attention = attention;
  return c;
}

Tensor token_batch(std::int64_t batch, std::int64_t n, std::uint64_t seed) {
  Generator gen(seed);
  std::vector<std::int64_t> ids;
  for (std::int64_t i = 0; i < batch * (n + 1); ++i) ids.push_back(static_cast<std::int64_t>(gen.next_u64() % 12));
  return from_vector(ids, {batch, n + 1});
}

double max_abs_diff(const Tensor& a, const Tensor& b) { return max(abs(sub(a, b))).item(); }

double gpt_loss(GPT& model, const Tensor& window) {
  const std::int64_t n = window.shape()[1] - 1;
  const Tensor logits = model.forward(narrow(window, 1, 0, n));
  return cross_entropy(logits, narrow(window, 1, 1, n)).item();
}

}  // namespace

TEST_CASE("Sequential and Lambda: layers in order through the virtual forward, named 0, 1, ...") {
  Generator gen(3);
  auto net = std::make_shared<nn::Sequential>(std::vector<std::shared_ptr<nn::Layer>>{
      std::make_shared<nn::Linear>(4, 8, true, gen),
      std::make_shared<nn::Lambda>([](const Tensor& x) { return relu(x); }),
      std::make_shared<nn::Linear>(8, 2, true, gen)});
  std::vector<std::string> names;
  for (const auto& [name, p] : net->named_parameters()) names.push_back(name);
  CHECK(names == std::vector<std::string>{"0.weight", "0.bias", "2.weight", "2.bias"});
  CHECK(net->size() == 3);

  const Tensor x = randn({5, 4}, gen);
  const auto& first = dynamic_cast<nn::Linear&>((*net)[0]);
  const auto& last = dynamic_cast<nn::Linear&>((*net)[2]);
  const Tensor want = linear(relu(linear(x, first.weight(), first.bias())), last.weight(), last.bias());
  nn::Layer& as_layer = *net;  // one call site for any layer
  CHECK(max_abs_diff(as_layer.forward(x), want) == 0.0);

  CHECK_THROWS_WITH(net->push_back(nullptr), doctest::Contains("Sequential::push_back: layer 3 is null"));
  CHECK_THROWS_WITH(nn::Lambda({}), doctest::Contains("Lambda: the function is empty"));
}

TEST_CASE("forward hooks: read every block's output, replace a sublayer's output, run in order, come off") {
  GPT model(tiny_gpt("elliptical"), 4);
  const Tensor ids = narrow(token_batch(2, 16, 9), 1, 0, 16);
  NoGradGuard no_grad;
  const Tensor clean = model.forward(ids);

  // Reading: each block's output, [B, N, d], in layer order.
  std::vector<std::string> seen;
  std::vector<std::int64_t> ids_added;
  for (auto& [name, module] : model.named_modules()) {
    if (dynamic_cast<nn::Block*>(module) == nullptr) continue;
    ids_added.push_back(module->add_forward_hook([&seen, name = name](const nn::Module&, const Tensor& out) {
      CHECK(out.shape() == Shape{2, 16, 32});
      seen.push_back(name);
      return Tensor{};  // keep the output
    }));
  }
  CHECK(max_abs_diff(model.forward(ids), clean) == 0.0);  // reading changes nothing
  CHECK(seen == std::vector<std::string>{"blocks.0", "blocks.1"});

  // Replacing: with every attention and MLP output zeroed, each block passes its input through, so the logits
  // are the head on the final norm of the embeddings alone.
  std::vector<std::pair<nn::Module*, std::int64_t>> zeroing;
  for (const char* name : {"blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "blocks.1.mlp"}) {
    nn::Module& sublayer = model.module(name);
    zeroing.emplace_back(&sublayer, sublayer.add_forward_hook([](const nn::Module&, const Tensor& out) {
      return mul(out, 0.0);
    }));
  }
  const Tensor embedded = add(embedding(model.parameter("tok_emb.weight"), ids), narrow(model.parameter("pos_emb"),
                                                                                          0, 0, 16));
  const Tensor bypass = linear(layer_norm(embedded, model.parameter("ln_f.weight"), model.parameter("ln_f.bias")),
                               model.parameter("head.weight"));
  CHECK(max_abs_diff(model.forward(ids), bypass) < 1e-6);

  // Order: a later hook sees what an earlier one returned.
  nn::Module& head = model.module("head");
  const std::int64_t doubler = head.add_forward_hook([](const nn::Module&, const Tensor& out) { return mul(out, 2.0); });
  Tensor after_doubling;
  const std::int64_t reader = head.add_forward_hook([&](const nn::Module&, const Tensor& out) {
    after_doubling = out;
    return Tensor{};
  });
  const Tensor doubled = model.forward(ids);
  CHECK(max_abs_diff(doubled, mul(bypass, 2.0)) < 1e-6);
  CHECK(max_abs_diff(after_doubling, doubled) == 0.0);

  // Removing a hook by its id leaves the others: without the reader (added second), the doubler still doubles.
  head.remove_forward_hook(reader);
  after_doubling = Tensor{};
  CHECK(max_abs_diff(model.forward(ids), doubled) == 0.0);
  CHECK_FALSE(after_doubling.defined());

  // Removing every hook gives the clean model back; an unknown id is an error.
  head.remove_forward_hook(doubler);
  for (auto [sublayer, id] : zeroing) sublayer->remove_forward_hook(id);
  for (std::size_t i = 0; i < ids_added.size(); ++i) model.block(i).remove_forward_hook(ids_added[i]);
  CHECK(max_abs_diff(model.forward(ids), clean) == 0.0);
  CHECK_THROWS_WITH(head.remove_forward_hook(reader), doctest::Contains("no hook with id"));
  CHECK_THROWS_WITH(head.add_forward_hook({}), doctest::Contains("the hook is empty"));
}

TEST_CASE("register_attention: names are checked, kinds are listed, unknown kinds are named") {
  const std::string& kind = uniform_kind();
  const auto kinds = nn::attention_kinds();
  CHECK(std::find(kinds.begin(), kinds.end(), kind) != kinds.end());
  CHECK(std::find(kinds.begin(), kinds.end(), "standard") != kinds.end());
  CHECK(std::find(kinds.begin(), kinds.end(), "elliptical") != kinds.end());
  CHECK(nn::parse_attention_kind(kind) == kind);

  const auto factory = [](const nn::AttentionSlot& slot) { return std::make_shared<UniformAttention>(slot); };
  CHECK_THROWS_WITH(nn::register_attention(kind, factory), doctest::Contains("'test-uniform' is already an attention"));
  CHECK_THROWS_WITH(nn::register_attention("standard", factory), doctest::Contains("already an attention kind"));
  CHECK_THROWS_WITH(nn::register_attention("two words", factory), doctest::Contains("not a usable kind name"));
  CHECK_THROWS_WITH(nn::register_attention("", factory), doctest::Contains("not a usable kind name"));
  CHECK_THROWS_WITH(nn::register_attention("test-empty", {}), doctest::Contains("the factory for 'test-empty' is empty"));
  CHECK_THROWS_WITH(nn::parse_attention_kind("cosine"),
                    doctest::Contains("'cosine' is not an attention kind; expected one of elliptical, standard"));

  nn::register_attention("test-null", [](const nn::AttentionSlot&) { return std::shared_ptr<nn::AttentionLayer>{}; });
  CHECK_THROWS_WITH(GPT(tiny_gpt("test-null")), doctest::Contains("the factory of 'test-null' returned no layer"));
  CHECK_THROWS_WITH(GPT(tiny_gpt("cosine")), doctest::Contains("'cosine' is not an attention kind"));
}

TEST_CASE("a registered attention kind trains in the GPT, round-trips through config.json and feeds the probe") {
  const std::string& kind = uniform_kind();
  GPT model(tiny_gpt(kind), 1);
  CHECK(dynamic_cast<UniformAttention*>(&model.block(0).attention()) != nullptr);
  CHECK(model.parameter("blocks.1.attn.value.weight").shape() == Shape{32, 32});

  // A few AdamW steps on one batch: the loss falls, so gradients reach the layer's own parameters.
  const Tensor window = token_batch(4, 16, 2);
  nn::AdamW optimizer(model.parameters(), {.lr = 1e-2});
  const double before = gpt_loss(model, window);
  for (int step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    const std::int64_t n = 16;
    cross_entropy(model.forward(narrow(window, 1, 0, n)), narrow(window, 1, 1, n)).backward();
    CHECK(model.parameter("blocks.0.attn.value.weight").grad().defined());
    optimizer.step();
  }
  CHECK(gpt_loss(model, window) < 0.8 * before);

  // Sampling a model whose layer takes no cache recomputes the window for each token, past the context too.
  const std::u32string vocab = U"abcdefghijkl";
  CHECK(!model.decodes_incrementally());
  CHECK(GPT(tiny_gpt("standard")).decodes_incrementally());
  const CharTokenizer tokenizer = CharTokenizer::from_vocab(vocab);
  const SampleOptions greedy{.tokens = 40, .temperature = 0, .top_k = 0, .seed = 0};
  const std::u32string sampled = sample_gpt(model, tokenizer, U"abcab", greedy);
  CHECK(sampled.size() == 40);
  CHECK(sampled == sample_gpt(model, tokenizer, U"abcab", greedy));
  {
    NoGradGuard no_grad;
    const Tensor last = select(select(model.forward(from_vector(tokenizer.encode(U"abcab"), {1, 5})), 0, 0), 0, -1);
    CHECK(sampled[0] == vocab[static_cast<std::size_t>(argmax(last, 0).item())]);
  }

  // The checkpoint's config names the kind, and parsing it back needs the kind registered.
  const std::string json = gpt_config_json(model.config(), vocab);
  CHECK(json.find("\"attn\": \"test-uniform\"") != std::string::npos);
  CHECK(parse_gpt_config_json(json, "run/config.json").config.attention == kind);
  std::string unknown = json;
  unknown.replace(unknown.find("test-uniform"), 12, "test-missing");
  CHECK_THROWS_WITH(parse_gpt_config_json(unknown, "run/config.json"),
                    doctest::Contains("'test-missing' is not an attention kind"));

  // The study's probe reads the uniform maps the layer records: every head attends alike, so redundancy is 0.
  std::vector<nn::Block*> blocks{&model.block(0), &model.block(1)};
  nn::BlockProbe probe(blocks);
  NoGradGuard no_grad;
  model.forward(narrow(window, 1, 0, 16));
  probe.collect();
  const nn::LayerStudy study = probe.result();
  CHECK(study.head_redundancy == std::vector<double>{0.0, 0.0});
  CHECK(study.mean_metric[1].empty());  // the layer scales no queries
  const Tensor& map = model.block(1).attention().last_attention();  // [B, H, N, N]
  CHECK(map.shape() == Shape{4, 2, 16, 16});
  const Tensor row = select(select(select(map, 0, 0), 0, 0), 0, 3);  // query 3 sees keys 0..3
  CHECK(select(row, 0, 0).item() == doctest::Approx(0.25));
  CHECK(select(row, 0, 3).item() == doctest::Approx(0.25));
  CHECK(select(row, 0, 4).item() == 0.0);
}

TEST_CASE("a registered attention kind goes into the ViT; a probe names a layer that records no maps") {
  const std::string& kind = uniform_kind();
  ViTConfig config = vit_preset("vit-xs");
  config.attention = kind;
  ViT model(config, 0);
  Generator gen(5);
  const Tensor images = uniform({3, 28, 28}, 0.0, 1.0, gen);
  const Tensor logits = model.forward(images);
  CHECK(logits.shape() == Shape{3, 10});
  CHECK(parse_vit_config_json(vit_config_json(config), "vit/config.json").attention == kind);

  // A kind whose layer never calls record_attention: the probe says so instead of failing obscurely.
  nn::register_attention("test-silent", [](const nn::AttentionSlot& slot) {
    struct Silent : nn::AttentionLayer {
      explicit Silent(const nn::AttentionSlot& s)
          : proj(register_module("proj", std::make_shared<nn::Linear>(s.dim, s.dim, true, *s.gen))) {}
      nn::AttentionOutput forward(const Tensor& x, bool, const Tensor&, nn::KVCache*) override {
        return {hooked(proj->forward(x)), {}};
      }
      std::shared_ptr<nn::Linear> proj;
    };
    return std::make_shared<Silent>(slot);
  });
  config.attention = "test-silent";
  ViT silent(config, 0);
  nn::BlockProbe probe({&silent.block(0)});
  NoGradGuard no_grad;
  silent.forward(images);
  CHECK_THROWS_WITH(probe.collect(), doctest::Contains("the attention of layer 0 recorded no probabilities"));
}

namespace {

using MakeOptimizer = std::function<std::unique_ptr<nn::Optimizer>(std::vector<Tensor> parameters)>;

std::unique_ptr<nn::Optimizer> adamw(std::vector<Tensor> parameters) {
  return std::make_unique<nn::AdamW>(std::move(parameters), nn::AdamWOptions{.lr = 1e-2});
}

// An optimizer of one's own: Adagrad, p -= lr * g / (sqrt(sum of g^2 so far) + 1e-10), one buffer per parameter.
class Adagrad : public nn::Optimizer {
 public:
  Adagrad(std::vector<Tensor> parameters, double lr)
      : Optimizer("Adagrad", {{.parameters = std::move(parameters)}}, lr, {"sum_of_squares"},
                  [](const Tensor&) { return 0.0; }) {}
  void step() override {
    NoGradGuard no_grad;
    begin_step();
    for (Slot& slot : slots()) {
      const Tensor g = gradient(slot);
      if (!g.defined()) continue;
      slot.buffers[0].add_(g * g);
      slot.parameter.add_(g / (sqrt(slot.buffers[0]) + 1e-10), -lr() * slot.lr_scale);
    }
  }
};

// A regression net of one's own trained by the library's loop for `end` of 12 steps, into `dir` (resuming what
// is there when `resume`) with the optimizer make_optimizer builds; returns its parameters.
std::vector<double> train_toy(const std::string& dir, std::int64_t end, bool resume,
                              const MakeOptimizer& make_optimizer = adamw) {
  Generator init(0);
  nn::Sequential model({std::make_shared<nn::Linear>(2, 16, true, init),
                        std::make_shared<nn::Lambda>([](const Tensor& x) { return tanh(x); }),
                        std::make_shared<nn::Linear>(16, 1, true, init)});
  const auto made = make_optimizer(model.parameters());
  nn::Optimizer& optimizer = *made;
  RunCheckpoints run(dir, "toy", "lr=0.01");
  Generator data(1);
  TrainLoop loop;
  loop.end = end;
  loop.steps = 12;
  loop.items_per_step = 32;
  RunningMean train_loss;
  if (resume) {
    TrainState state = run.resume(model, optimizer);
    data.set_state(state.generators.at("data"));
    loop.start = state.step;
    train_loss.load(state, "loss", run.files().state);
  } else {
    run.start("{}\n");
  }
  loop.learning_rate = [](std::int64_t step) { return nn::warmup_cosine_lr(step, 2, 12, 1e-2, 1e-3); };
  loop.loss = [&](std::int64_t) {
    const Tensor x = uniform({32, 2}, -1.0, 1.0, data);
    return mean(pow(model.forward(x) - sum(x * x, {1}, true), 2.0));
  };
  loop.evaluate_after = [](std::int64_t done) { return done % 5 == 0; };
  loop.evaluate = [](const TrainProgress& at, double mean_loss) {
    CHECK(at.steps == 12);
    return fmt::format("{{\"step\": {}, \"train_loss\": {:.17g}}}\n", at.step, mean_loss);
  };
  loop.state = [&](std::int64_t) { return TrainState{.step = 0, .generators = {{"data", data.state()}}, .fields = {}}; };
  run_train_loop(loop, model, optimizer, run, train_loss);
  std::vector<double> values;
  for (const Tensor& p : model.parameters())
    for (double v : p.to_vector<double>()) values.push_back(v);
  return values;
}

}  // namespace

TEST_CASE("run_train_loop: a module and an optimizer of one's own train, checkpoint and resume exactly") {
  testing::TempDir whole, stopped;
  const std::vector<double> straight = train_toy(whole.str(), 12, false);
  train_toy(stopped.str(), 7, false);  // stopped between evaluations: a checkpoint without a metrics line
  CHECK(checkpoint_step(RunFiles(stopped.str())) == 7);
  CHECK(train_toy(stopped.str(), 12, true) == straight);
  const std::string metrics = io::read_file(whole / "metrics.jsonl", 1 << 20);
  CHECK(io::read_file(stopped / "metrics.jsonl", 1 << 20) == metrics);
  CHECK(std::count(metrics.begin(), metrics.end(), '\n') == 3);  // after steps 5, 10 and the last, 12
  CHECK(metrics.find("{\"step\": 12, ") != std::string::npos);

  // Any optimizer: SGD with Nesterov momentum checkpoints its buffers and resumes as exactly.
  const MakeOptimizer sgd = [](std::vector<Tensor> parameters) -> std::unique_ptr<nn::Optimizer> {
    return std::make_unique<nn::SGD>(std::move(parameters), nn::SGDOptions{.lr = 0.05, .momentum = 0.9,
                                                                           .nesterov = true});
  };
  testing::TempDir sgd_whole, sgd_stopped;
  const std::vector<double> sgd_straight = train_toy(sgd_whole.str(), 12, false, sgd);
  CHECK(sgd_straight != straight);
  train_toy(sgd_stopped.str(), 7, false, sgd);
  CHECK(train_toy(sgd_stopped.str(), 12, true, sgd) == sgd_straight);
  CHECK_THROWS_WITH(train_toy(sgd_stopped.str(), 12, true), doctest::Contains("holds an SGD optimizer's state"));
  // And an optimizer of one's own, with its own buffers.
  const MakeOptimizer adagrad = [](std::vector<Tensor> parameters) -> std::unique_ptr<nn::Optimizer> {
    return std::make_unique<Adagrad>(std::move(parameters), 0.05);
  };
  testing::TempDir own_whole, own_stopped;
  const std::vector<double> own_straight = train_toy(own_whole.str(), 12, false, adagrad);
  CHECK(own_straight != straight);
  train_toy(own_stopped.str(), 7, false, adagrad);
  CHECK(train_toy(own_stopped.str(), 12, true, adagrad) == own_straight);
  CHECK(io::load_safetensors(own_stopped / "train_state.safetensors").metadata.at("optimizer") == "Adagrad");

  // Options are named when wrong.
  nn::Linear model(2, 1);
  nn::AdamW optimizer(model.parameters());
  RunCheckpoints run(whole / "other", "toy", "");
  TrainLoop loop;
  CHECK_THROWS_WITH(run_train_loop(loop, model, optimizer, run), doctest::Contains("must all be set"));
  loop.learning_rate = [](std::int64_t) { return 1.0; };
  loop.loss = [&](std::int64_t) { return sum(model.forward(ones({1, 2}))); };
  loop.evaluate_after = [](std::int64_t) { return false; };
  loop.evaluate = [](const TrainProgress&, double) { return std::string(); };
  loop.state = [](std::int64_t) { return TrainState{}; };
  loop.end = 5;
  loop.steps = 4;
  CHECK_THROWS_WITH(run_train_loop(loop, model, optimizer, run), doctest::Contains("end (5) <= steps (4)"));

  // Each metrics line is one JSON object with its checkpoint's step (a resume keeps the lines by it); the newline
  // is optional.
  RunCheckpoints lines(whole / "lines", "toy", "");
  lines.start("{}\n");
  loop.steps = 5;
  loop.evaluate = [](const TrainProgress& at, double) { return fmt::format("{{\"step\": {}}}", at.step); };
  run_train_loop(loop, model, optimizer, lines);
  CHECK(io::read_file(whole / "lines/metrics.jsonl", 1 << 10) == "{\"step\": 5}\n");
  for (const std::string bad : {"{\"step\": 4}", "{\"step\": 5}\n{\"step\": 5}\n", "step 5", "{\"epoch\": 1}"}) {
    loop.evaluate = [bad](const TrainProgress&, double) { return bad; };
    CHECK_THROWS_WITH(run_train_loop(loop, model, optimizer, lines),
                      doctest::Contains("toy: a metrics line must be one line of JSON, an object whose \"step\" is "
                                        "the checkpoint's (5)"));
  }
  CHECK(io::read_file(whole / "lines/metrics.jsonl", 1 << 10) == "{\"step\": 5}\n");
}

TEST_CASE("last_line: the last metrics line, with or without its newline") {
  CHECK(last_line("").empty());
  CHECK(last_line("\n").empty());
  CHECK(last_line("{\"step\": 1}") == "{\"step\": 1}");
  CHECK(last_line("{\"step\": 1}\n") == "{\"step\": 1}");
  CHECK(last_line("{\"step\": 1}\n{\"step\": 2}\n") == "{\"step\": 2}");
  CHECK(last_line("{\"step\": 1}\n{\"step\": 2}") == "{\"step\": 2}");
}

TEST_CASE("seconds_left: the pace of the steps this process did, so a resumed run's time left is not too short") {
  TrainProgress at;
  at.steps = 100;
  at.step = at.start_step = 40;  // resumed at step 40, no step done yet here
  CHECK(std::isnan(seconds_left(at)));
  at.step = 50;
  at.start_elapsed_s = 300;  // the earlier processes trained 40 steps in 300 s
  at.elapsed_s = 320;        // this one 10 in 20 s: 50 steps left take 100 s (not 320 / 50 * 50 = 320 s)
  CHECK(seconds_left(at) == doctest::Approx(100));
  at.start_step = 0;
  at.start_elapsed_s = 0;
  at.elapsed_s = 20;
  CHECK(seconds_left(at) == doctest::Approx(20));
  CHECK(format_duration(seconds_left(at)) == "20s");
  CHECK(format_duration(59.4) == "59s");
  CHECK(format_duration(59.6) == "1m00s");
  CHECK(format_duration(3599) == "59m59s");
  CHECK(format_duration(3600) == "1h00m");
  CHECK(format_duration(NAN) == "?");
  at.step = at.steps;
  CHECK(seconds_left(at) == 0);
}

TEST_CASE("save_gpt and save_vit write what load_gpt and load_vit read, and never over a training run") {
  testing::TempDir dir;
  GPT gpt(tiny_gpt("elliptical"), 3);
  const CharTokenizer tokenizer = CharTokenizer::from_vocab(U"abcdefghijkl");
  save_gpt(dir / "gpt", gpt, tokenizer);
  const LoadedGPT loaded = load_gpt(dir / "gpt");
  CHECK(loaded.tokenizer.vocab() == tokenizer.vocab());
  CHECK(loaded.model->config().attention == "elliptical");
  for (const auto& [name, parameter] : gpt.named_parameters())
    CHECK_MESSAGE(max_abs_diff(loaded.model->parameter(name), parameter) == 0, name);
  CHECK_THROWS_WITH(save_gpt(dir / "other", gpt, CharTokenizer::from_vocab(U"abc")),
                    doctest::Contains("save_gpt: the tokenizer has 3 characters, the model's vocabulary 12"));

  ViTConfig config = vit_preset("vit-xs");
  ViT vit(config, 5);
  save_vit(dir / "vit", vit);
  const auto loaded_vit = load_vit(dir / "vit");
  for (const auto& [name, parameter] : vit.named_parameters())
    CHECK_MESSAGE(max_abs_diff(loaded_vit->parameter(name), parameter) == 0, name);

  // A training run's folder keeps the parameters its train_state.safetensors goes with.
  io::write_file_atomic(dir / "vit/train_state.safetensors", "state");
  const std::string model_before = io::read_file(dir / "vit/model.safetensors", 1 << 24);
  CHECK_THROWS_WITH(save_vit(dir / "vit", ViT(config, 6)), doctest::Contains("holds a training run"));
  CHECK(io::read_file(dir / "vit/model.safetensors", 1 << 24) == model_before);
}
