#include "models/gpt_train.hpp"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "dist/data_parallel.hpp"
#include "models/checkpoint.hpp"
#include "nn/optim.hpp"

namespace ellipse {

namespace {

constexpr std::uint64_t kMaxTextBytes = std::uint64_t{1} << 31;

std::vector<std::int64_t> read_text_ids(const std::string& path, const CharTokenizer* tokenizer,
                                        CharTokenizer* built) {
  const std::u32string text = decode_utf8(io::read_file(path, kMaxTextBytes), path);
  ELLIPSE_CHECK(!text.empty(), "{}: the text is empty", path);
  if (!tokenizer) {
    *built = CharTokenizer::from_text(text);
    tokenizer = built;
  }
  return tokenizer->encode(text);
}

std::string metrics_line(const EvalRecord& r) {
  nlohmann::ordered_json json;
  json["step"] = r.step;
  json["train_loss"] = r.train_loss;
  json["val_loss"] = r.val_loss;
  json["lr"] = r.lr;
  json["tokens_per_s"] = r.tokens_per_s;
  json["elapsed_s"] = r.elapsed_s;
  return json.dump() + "\n";
}

std::string flags_fingerprint(const GPTTrainOptions& o, std::int64_t batch) {
  return fmt::format("steps={} batch={} lr={} final_lr={} warmup={} betas=({},{}) wd={} clip={} seed={}", o.steps, batch,
                     o.lr, o.final_lr, o.warmup, o.beta1, o.beta2, o.weight_decay, o.clip, o.seed);
}

}  // namespace

double evaluate_gpt(GPT& model, const std::vector<std::int64_t>& ids, std::int64_t batch) {
  return evaluate_gpt(model, ids, ids, batch);
}

double evaluate_gpt(GPT& model, const std::vector<std::int64_t>& context, const std::vector<std::int64_t>& targets,
                    std::int64_t batch) {
  return evaluate_gpt(model, context, targets, batch, dist::single_process());
}

double evaluate_gpt(GPT& model, const std::vector<std::int64_t>& context, const std::vector<std::int64_t>& targets,
                    std::int64_t batch, dist::Communicator& comm) {
  ELLIPSE_CHECK(context.size() == targets.size(), "eval: the context has {} tokens but the targets {}; expected the "
                "same length", context.size(), targets.size());
  const std::int64_t t = model.config().seq_len;
  const std::int64_t windows = (static_cast<std::int64_t>(context.size()) - 1) / t;
  ELLIPSE_CHECK(windows > 0, "eval: {} tokens are fewer than one window of {} (+1 target)", context.size(), t);
  NoGradGuard no_grad;
  const bool was_training = model.training();
  model.eval();
  const Device device = model.device();
  double total = 0;
  for (std::int64_t first = batch * comm.rank(); first < windows; first += batch * comm.size()) {
    const std::int64_t count = std::min(batch, windows - first);
    std::vector<std::int64_t> inputs, next;
    for (std::int64_t w = first; w < first + count; ++w) {
      const auto offset = static_cast<std::ptrdiff_t>(w * t);
      inputs.insert(inputs.end(), context.begin() + offset, context.begin() + offset + t);
      next.insert(next.end(), targets.begin() + offset + 1, targets.begin() + offset + t + 1);
    }
    const Tensor logits = model.forward(from_vector(inputs, {count, t}, device));
    total += cross_entropy(logits, from_vector(next, {count, t}, device)).item() * static_cast<double>(count);
  }
  model.train(was_training);
  if (comm.size() > 1) {
    Tensor sum = from_vector(std::vector<double>{total}, {1});
    comm.all_reduce(sum, dist::Reduction::sum);
    total = sum.item();
  }
  return total / static_cast<double>(windows);
}

EvalRecord train_gpt(const GPTTrainOptions& o, const std::function<void(const TrainProgress&)>& on_step,
                     const std::function<void(const EvalRecord&)>& on_eval) {
  ELLIPSE_CHECK(!o.out_dir.empty(), "train gpt: an output directory is required");
  ELLIPSE_CHECK(o.steps > 0 && o.eval_every > 0 && o.warmup >= 0 && o.lr > 0 && o.final_lr >= 0 && o.clip > 0,
                "train gpt: steps ({}), eval-every ({}) and lr ({}) must be positive", o.steps, o.eval_every, o.lr);
  ELLIPSE_CHECK(o.stop_after >= 0 && o.stop_after <= o.steps, "train gpt: stop_after {} must lie in [0, steps {}]",
                o.stop_after, o.steps);
  backend_for(o.device);  // an unusable device fails here, before any file is read or written
  const DetectAnomalyGuard anomaly(o.detect_anomaly || anomaly_detection_enabled());
  const RunFiles files(o.out_dir);
  dist::Communicator& comm = o.communicator ? *o.communicator : dist::single_process();

  GPTConfig config;
  CharTokenizer tokenizer;
  std::vector<std::int64_t> ids;
  if (o.resume) {
    auto saved = parse_gpt_config_json(io::read_file(files.config, 64 << 20), files.config);
    config = saved.config;
    tokenizer = std::move(saved.tokenizer);
    ELLIPSE_CHECK(config.name == o.config && config.attention == o.attention &&
                  config.metric == o.metric.value_or(config.metric),
                  "train gpt: resuming {}, which holds a {} model with {} attention ({}), but the options ask for {} "
                  "with {} attention", o.out_dir, config.name, config.attention,
                  nn::metric_mode_name(config.metric), o.config, o.attention);
    ELLIPSE_CHECK(config.dropout == o.dropout, "train gpt: resuming {}, which was trained with dropout {}, but the "
                  "options ask for {}", o.out_dir, config.dropout, o.dropout);
    // config.json does not record the preset's training batch; without a batch option the run used the preset's.
    config.batch = gpt_preset(config.name, tokenizer.size()).batch;
    ids = read_text_ids(o.text_path, &tokenizer, nullptr);
  } else {
    CharTokenizer built;
    ids = read_text_ids(o.text_path, nullptr, &built);
    tokenizer = std::move(built);
    config = gpt_preset(o.config, tokenizer.size());
    config.attention = o.attention;
    config.metric = o.metric.value_or(nn::MetricMode::causal);
    config.dropout = o.dropout;
  }
  const std::int64_t batch = o.batch.value_or(config.batch);
  ELLIPSE_CHECK(batch > 0, "train gpt: batch must be positive, got {}", batch);
  ELLIPSE_CHECK(batch % comm.size() == 0, "train gpt: the batch of {} does not split evenly over {} ranks", batch,
                comm.size());
  const std::int64_t rank_batch = batch / comm.size();
  dist::check_same_on_all_ranks(comm, "train gpt: the options", flags_fingerprint(o, batch) + " " + o.out_dir);
  dist::check_same_on_all_ranks(comm, "train gpt: the text", fmt::format("{} ids, hash {}", ids.size(),
                                                                          dist::fingerprint(ids)));
  const TextSplit split = split_train_val(ids);
  ELLIPSE_CHECK(static_cast<std::int64_t>(split.train.size()) > config.seq_len &&
                static_cast<std::int64_t>(split.val.size()) > config.seq_len,
                "{}: {} characters are too few: both the train (90%) and val (10%) parts need more than seq_len {} "
                "characters", o.text_path, ids.size(), config.seq_len);

  GPT model(config, o.seed);
  model.to(o.device);
  model.train();
  nn::AdamW optimizer(model.parameters(), {.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = 1e-8,
                                           .weight_decay = o.weight_decay});
  Generator data_gen(o.seed ^ 0x5EEDDA7Aull);
  RunCheckpoints run(o.out_dir, "train gpt", flags_fingerprint(o, batch));
  TrainLoop loop;
  loop.end = o.stop_after > 0 ? o.stop_after : o.steps;
  loop.steps = o.steps;
  loop.clip = o.clip;
  loop.items_per_step = batch * config.seq_len;
  RunningMean train_loss;  // since the last evaluation
  if (o.resume) {
    TrainState state = resume_run(run, model, optimizer, comm);
    ELLIPSE_CHECK(state.generators.count("data") == 1 && state.generators.count("model") == 1,
                  "{}: the generators' states are missing", files.state);
    data_gen.set_state(state.generators["data"]);
    model.generator().set_state(state.generators["model"]);
    loop.start = state.step;
    train_loss.load(state, "loss", files.state);
  } else if (comm.rank() == 0) {
    run.start(gpt_config_json(config, tokenizer.vocab()));
  }
  dist::check_same_on_all_ranks(comm, "train gpt: the model", dist::parameter_signature(model));
  dist::broadcast_parameters(model, comm);
  loop.communicator = &comm;

  EvalRecord last;
  loop.learning_rate = [&](std::int64_t step) { return nn::warmup_cosine_lr(step, o.warmup, o.steps, o.lr, o.final_lr); };
  loop.loss = [&](std::int64_t) {
    // Every rank draws the whole batch's windows (one generator state everywhere) and trains on its share.
    auto [inputs, targets] = sample_windows(split.train, batch, config.seq_len, data_gen, o.device);
    const std::int64_t first = comm.rank() * rank_batch;
    return cross_entropy(model.forward(narrow(inputs, 0, first, rank_batch)), narrow(targets, 0, first, rank_batch));
  };
  loop.evaluate_after = [&](std::int64_t done) { return done % o.eval_every == 0; };
  loop.evaluate = [&](const TrainProgress& at, double mean_train_loss) {
    last = {at.step, mean_train_loss, evaluate_gpt(model, split.val, split.val, 32, comm), at.lr, at.items_per_s,
            at.elapsed_s};
    run.check_finite(last.val_loss, "the val loss", at.step);
    if (on_eval && comm.rank() == 0) on_eval(last);
    return metrics_line(last);
  };
  loop.state = [&](std::int64_t) {
    return TrainState{.step = 0,
                      .generators = {{"data", data_gen.state()}, {"model", model.generator().state()}},
                      .fields = {}};
  };
  loop.on_step = on_step;
  run_train_loop(loop, model, optimizer, run, train_loss);
  return last;
}

std::u32string sample_gpt(GPT& model, const CharTokenizer& tokenizer, std::u32string_view prompt,
                          const SampleOptions& options) {
  ELLIPSE_CHECK(!prompt.empty(), "sample: the prompt is empty");
  ELLIPSE_CHECK(options.tokens >= 0 && options.temperature >= 0 && options.top_k >= 0,
                "sample: tokens ({}), temperature ({}) and top-k ({}) must not be negative", options.tokens,
                options.temperature, options.top_k);
  NoGradGuard no_grad;
  model.eval();
  const Device device = model.device();
  std::vector<std::int64_t> history = tokenizer.encode(prompt);
  Generator gen(options.seed);
  const std::int64_t context = model.config().seq_len;
  std::vector<nn::KVCache> caches;
  // Without a layer that decodes incrementally, every token reads the last `context` tokens in full.
  const bool incremental = model.decodes_incrementally();
  // The caches hold history[window, cached); positions count from `window`.
  std::size_t window = 0, cached = 0;
  auto restart = [&](std::size_t keep) {
    caches.clear();
    window = cached = history.size() - keep;
  };
  if (static_cast<std::int64_t>(history.size()) > context) restart(static_cast<std::size_t>(context));
  std::u32string generated;
  for (std::int64_t i = 0; i < options.tokens; ++i) {
    Tensor logits;
    if (incremental) {
      // A full window starts again from its last half (recomputing those tokens' keys and values).
      if (static_cast<std::int64_t>(history.size() - window) > context)
        restart(static_cast<std::size_t>(std::max<std::int64_t>(1, context / 2)));
      const std::vector<std::int64_t> fresh(history.begin() + static_cast<std::ptrdiff_t>(cached), history.end());
      logits = model.forward_cached(from_vector(fresh, {1, static_cast<std::int64_t>(fresh.size())}, device), caches);
      cached = history.size();
    } else {
      const std::size_t length = std::min(history.size(), static_cast<std::size_t>(context));
      const std::vector<std::int64_t> last_tokens(history.end() - static_cast<std::ptrdiff_t>(length), history.end());
      logits = model.forward(from_vector(last_tokens, {1, static_cast<std::int64_t>(length)}, device));
    }
    std::vector<double> last = select(select(logits, 0, 0), 0, -1).to_vector<double>();

    std::int64_t next = 0;
    if (options.temperature == 0) {
      next = std::max_element(last.begin(), last.end()) - last.begin();
    } else {
      if (options.top_k > 0 && options.top_k < static_cast<std::int64_t>(last.size())) {
        std::vector<double> sorted = last;
        std::nth_element(sorted.begin(), sorted.begin() + options.top_k - 1, sorted.end(), std::greater<>());
        const double threshold = sorted[static_cast<std::size_t>(options.top_k - 1)];
        for (auto& l : last)
          if (l < threshold) l = -INFINITY;
      }
      const double top = *std::max_element(last.begin(), last.end());
      double total = 0;
      for (auto& l : last) total += (l = std::exp((l - top) / options.temperature));
      double draw = gen.uniform() * total;
      for (next = 0; next + 1 < static_cast<std::int64_t>(last.size()); ++next) {
        draw -= last[static_cast<std::size_t>(next)];
        if (draw < 0) break;
      }
    }
    history.push_back(next);
    generated += tokenizer.vocab()[static_cast<std::size_t>(next)];
  }
  return generated;
}

}  // namespace ellipse
