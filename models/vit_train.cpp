#include "models/vit_train.hpp"

#include <algorithm>
#include <cmath>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <numeric>
#include <optional>
#include <span>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "dist/data_parallel.hpp"
#include "nn/optim.hpp"

namespace ellipse {

namespace {

// Salts that keep the data order, the augmentation and the model's own stream independent.
constexpr std::uint64_t kOrderSalt = 0x0DE5'0DE5'0DE5'0DE5ull, kAugmentSalt = 0xA116'A116'A116'A116ull;

// The training order of one epoch: a permutation that depends on (seed, epoch) only, so that a resumed
// run needs no generator state to continue it.
std::vector<std::int64_t> epoch_order(std::int64_t n, std::uint64_t seed, std::int64_t epoch) {
  std::vector<std::int64_t> order(static_cast<std::size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  Generator gen(mix64(seed ^ kOrderSalt, static_cast<std::uint64_t>(epoch)));
  for (std::int64_t i = n - 1; i > 0; --i) std::swap(order[i], order[gen.integer(i + 1)]);
  return order;
}

LabeledImages first_items(const LabeledImages& data, std::int64_t limit) {
  if (limit <= 0 || limit >= data.size()) return data;
  return {.images = narrow(data.images, 0, 0, limit), .labels = narrow(data.labels, 0, 0, limit)};
}

std::string metrics_line(const ViTEvalRecord& r) {
  nlohmann::ordered_json json;
  json["step"] = r.step;
  json["epoch"] = r.epoch;
  json["train_loss"] = r.train_loss;
  json["test_loss"] = r.test_loss;
  json["test_acc"] = r.test_acc;
  json["lr"] = r.lr;
  json["images_per_s"] = r.images_per_s;
  json["elapsed_s"] = r.elapsed_s;
  return json.dump() + "\n";
}

std::string flags_fingerprint(const ViTTrainOptions& o, std::int64_t batch) {
  return fmt::format("epochs={} batch={} lr={} final_lr={} warmup_epochs={} betas=({},{}) wd={} clip={} seed={} "
                     "augment={} max_shift={} limit_train={} limit_test={}", o.epochs, batch, o.lr, o.final_lr,
                     o.warmup_epochs, o.beta1, o.beta2, o.weight_decay, o.clip, o.seed, o.augment, o.max_shift,
                     o.limit_train, o.limit_test);
}

// While alive, the model's parameters need no gradient: an attack differentiates with respect to the
// input only, and skips the weight gradients' GEMMs. Afterwards each parameter gets its own flag back, so
// that one frozen on purpose stays frozen.
class FrozenParameters {
 public:
  explicit FrozenParameters(nn::Module& model) : parameters_(model.parameters()) {
    for (auto& p : parameters_) {
      required_.push_back(p.requires_grad());
      p.requires_grad_(false);
    }
  }
  ~FrozenParameters() {
    for (std::size_t i = 0; i < parameters_.size(); ++i) parameters_[i].requires_grad_(required_[i]);
  }
  FrozenParameters(const FrozenParameters&) = delete;
  FrozenParameters& operator=(const FrozenParameters&) = delete;

 private:
  std::vector<Tensor> parameters_;
  std::vector<bool> required_;
};

// The gradient of the mean cross-entropy with respect to the images, as a flat vector (the attacks use
// its signs). Records the graph even when the caller evaluates under a NoGradGuard. `labels` are on the
// model's device.
std::vector<float> input_gradient(ViT& model, const std::vector<float>& pixels, const Shape& shape,
                                  const Tensor& labels) {
  struct GradEnabled {
    bool previous = grad_enabled();
    GradEnabled() { set_grad_enabled(true); }
    ~GradEnabled() { set_grad_enabled(previous); }
  } grad_enabled_here;
  Tensor images = from_vector(pixels, shape, model.device());
  images.requires_grad_(true);
  const Tensor loss = cross_entropy(model.forward(images), labels);
  loss.backward();
  return images.grad().to_vector<float>();
}

float sign(float g) { return static_cast<float>((g > 0) - (g < 0)); }

// Applies the perturbation to one batch of clean pixels.
std::vector<float> perturb(ViT& model, const std::vector<float>& clean, const Shape& shape, const Tensor& labels,
                           const Perturbation& p, Generator& gen) {
  using Kind = Perturbation::Kind;
  std::vector<float> x = clean;
  auto clip01 = [](float v) { return std::clamp(v, 0.0f, 1.0f); };
  const auto eps = static_cast<float>(p.size);
  switch (p.kind) {
    case Kind::none:
      break;
    case Kind::gaussian:
      for (auto& v : x) v = clip01(v + static_cast<float>(p.size * gen.normal()));
      break;
    case Kind::fgsm: {
      const auto grad = input_gradient(model, x, shape, labels);
      for (std::size_t i = 0; i < x.size(); ++i) x[i] = clip01(x[i] + eps * sign(grad[i]));
      break;
    }
    case Kind::pgd: {
      const auto step = static_cast<float>(p.step_size > 0 ? p.step_size : p.size / 4);
      for (auto& v : x) v = clip01(v + static_cast<float>((2 * gen.uniform() - 1) * p.size));  // random start
      for (std::int64_t s = 0; s < p.steps; ++s) {
        const auto grad = input_gradient(model, x, shape, labels);
        for (std::size_t i = 0; i < x.size(); ++i)
          x[i] = clip01(std::clamp(x[i] + step * sign(grad[i]), clean[i] - eps, clean[i] + eps));
      }
      break;
    }
  }
  return x;
}

// A number or a fraction such as 8/255.
double parse_amount(std::string_view text, std::string_view context) {
  auto number = [&](std::string_view part) {
    std::size_t used = 0;
    double value = 0;
    try {
      value = std::stod(std::string(part), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    ELLIPSE_CHECK(!part.empty() && used == part.size() && std::isfinite(value), "{}: '{}' is not a number",
                  context, text);
    return value;
  };
  const auto slash = text.find('/');
  if (slash == std::string_view::npos) return number(text);
  const double denominator = number(text.substr(slash + 1));
  ELLIPSE_CHECK(denominator != 0, "{}: '{}' divides by zero", context, text);
  return number(text.substr(0, slash)) / denominator;
}

}  // namespace

LabeledImages image_batch(const LabeledImages& data, std::span<const std::int64_t> indices, Generator* augment,
                          std::int64_t max_shift, Device device) {
  const Tensor& images = data.images;
  ELLIPSE_CHECK(images.defined() && images.dim() == 3 && images.shape()[1] == images.shape()[2] &&
                    images.dtype() == DType::f32 && images.device().is_cpu(),
                "image_batch: expected f32 images [N, S, S] on the cpu, got {}",
                images.defined() ? fmt::format("{} {} on {}", dtype_name(images.dtype()), to_string(images.shape()),
                                               images.device().str())
                                 : "none");
  ELLIPSE_CHECK(data.labels.defined() && data.labels.dtype() == DType::i64 && data.labels.device().is_cpu() &&
                    data.labels.shape() == Shape{images.shape()[0]},
                "image_batch: expected i64 labels [{}] on the cpu, one per image, got {}", images.shape()[0],
                data.labels.defined() ? fmt::format("{} {} on {}", dtype_name(data.labels.dtype()),
                                                    to_string(data.labels.shape()), data.labels.device().str())
                                      : "none");
  const std::int64_t side = images.shape()[1], area = side * side;
  ELLIPSE_CHECK(max_shift >= 0 && max_shift < side, "image_batch: max_shift {} is not in [0, {})", max_shift, side);
  for (std::size_t i = 0; i < indices.size(); ++i)
    ELLIPSE_CHECK(indices[i] >= 0 && indices[i] < data.size(), "image_batch: index {} at position {} is not in [0, {})",
                  indices[i], i, data.size());
  const Tensor dense_images = contiguous(images), dense_labels = contiguous(data.labels);
  const float* source = dense_images.data<float>();
  const std::int64_t* source_labels = dense_labels.data<std::int64_t>();
  const auto n = static_cast<std::int64_t>(indices.size());
  std::vector<float> batch(static_cast<std::size_t>(n * area), 0.0f);
  std::vector<std::int64_t> labels(static_cast<std::size_t>(n));
  for (std::int64_t i = 0; i < n; ++i) {
    const float* image = source + indices[i] * area;
    float* out = batch.data() + i * area;
    labels[static_cast<std::size_t>(i)] = source_labels[indices[i]];
    if (!augment) {
      std::copy(image, image + area, out);
      continue;
    }
    const std::int64_t dy = augment->integer(2 * max_shift + 1) - max_shift;
    const std::int64_t dx = augment->integer(2 * max_shift + 1) - max_shift;
    const bool flip = augment->integer(2) == 1;
    for (std::int64_t y = 0; y < side; ++y) {
      const std::int64_t sy = y + dy;
      if (sy < 0 || sy >= side) continue;
      for (std::int64_t x = 0; x < side; ++x) {
        const std::int64_t sx = (flip ? side - 1 - x : x) + dx;
        if (sx >= 0 && sx < side) out[y * side + x] = image[sy * side + sx];
      }
    }
  }
  return {.images = from_vector(batch, {n, side, side}, device), .labels = from_vector(labels, {n}, device)};
}

Perturbation Perturbation::parse(std::string_view text) {
  if (text == "clean") return {};
  const auto colon = text.find(':');
  ELLIPSE_CHECK(colon != std::string_view::npos, "perturbation '{}': expected clean, gaussian:SIGMA, fgsm:EPS "
                "or pgd:EPS[,STEPS[,STEP]]", text);
  const std::string_view kind = text.substr(0, colon);
  std::vector<std::string_view> args;
  for (std::string_view rest = text.substr(colon + 1);;) {
    const auto comma = rest.find(',');
    args.push_back(rest.substr(0, comma));
    if (comma == std::string_view::npos) break;
    rest = rest.substr(comma + 1);
  }
  const std::string context = fmt::format("perturbation '{}'", text);
  Perturbation p;
  p.size = parse_amount(args[0], context);
  ELLIPSE_CHECK(p.size >= 0 && p.size <= 1, "{}: the size {} must lie in [0, 1] (pixels are in [0, 1])", context,
                p.size);
  if (kind == "gaussian" || kind == "fgsm") {
    ELLIPSE_CHECK(args.size() == 1, "{}: {} takes one number", context, kind);
    p.kind = kind == "gaussian" ? Kind::gaussian : Kind::fgsm;
    return p;
  }
  ELLIPSE_CHECK(kind == "pgd", "{}: unknown kind '{}'; expected clean, gaussian, fgsm or pgd", context, kind);
  ELLIPSE_CHECK(args.size() <= 3, "{}: pgd takes EPS[,STEPS[,STEP]]", context);
  p.kind = Kind::pgd;
  if (args.size() >= 2) {
    const double steps = parse_amount(args[1], context);
    ELLIPSE_CHECK(steps >= 1 && steps <= 10000 && steps == std::floor(steps), "{}: STEPS must be an integer in "
                  "[1, 10000]", context);
    p.steps = static_cast<std::int64_t>(steps);
  }
  if (args.size() == 3) {
    p.step_size = parse_amount(args[2], context);
    ELLIPSE_CHECK(p.step_size > 0 && p.step_size <= 1, "{}: STEP must lie in (0, 1]", context);
  }
  return p;
}

Tensor perturb_images(ViT& model, const Tensor& images, const Tensor& labels, const Perturbation& perturbation,
                      Generator& gen) {
  ELLIPSE_CHECK(images.defined() && images.dim() == 3 && images.dtype() == DType::f32,
                "perturb_images: expected f32 images [B, S, S], got {}",
                images.defined() ? fmt::format("{} {}", dtype_name(images.dtype()), to_string(images.shape()))
                                 : "none");
  ELLIPSE_CHECK(labels.defined() && labels.dtype() == DType::i64 && labels.shape() == Shape{images.shape()[0]},
                "perturb_images: expected i64 labels [{}], one per image, got {}", images.shape()[0],
                labels.defined() ? fmt::format("{} {}", dtype_name(labels.dtype()), to_string(labels.shape()))
                                 : "none");
  ELLIPSE_CHECK(perturbation.size >= 0 && perturbation.steps >= 0 && perturbation.step_size >= 0,
                "perturb_images: expected a size, steps and step size of at least 0, got {}, {} and {}",
                perturbation.size, perturbation.steps, perturbation.step_size);
  std::optional<FrozenParameters> frozen;
  if (perturbation.kind == Perturbation::Kind::fgsm || perturbation.kind == Perturbation::Kind::pgd)
    frozen.emplace(model);
  const std::vector<float> pixels = perturb(model, contiguous(images).to_vector<float>(), images.shape(),
                                            labels.to(model.device()), perturbation, gen);
  return from_vector(pixels, images.shape(), images.device());
}

std::string Perturbation::str() const {
  switch (kind) {
    case Kind::none: return "clean";
    case Kind::gaussian: return fmt::format("gaussian:{}", size);
    case Kind::fgsm: return fmt::format("fgsm:{}", size);
    case Kind::pgd: return fmt::format("pgd:{},{},{}", size, steps, step_size > 0 ? step_size : size / 4);
  }
  return "";
}

namespace {

// Batches rank, rank + size, ... of the data on this rank, the sums reduced over the ranks. Perturbations draw
// from one generator in batch order, so they need a single process.
Accuracy evaluate_batches(ViT& model, const LabeledImages& all, const Perturbation& perturbation, std::int64_t limit,
                          std::int64_t batch, dist::Communicator& comm) {
  ELLIPSE_CHECK(batch > 0 && limit >= 0, "eval vit: batch ({}) must be positive and limit ({}) not negative", batch,
                limit);
  const LabeledImages data = first_items(all, limit);
  ELLIPSE_CHECK(data.size() > 0, "eval vit: no images to evaluate");
  const bool was_training = model.training();
  model.eval();
  const bool attack = perturbation.kind == Perturbation::Kind::fgsm || perturbation.kind == Perturbation::Kind::pgd;
  std::optional<FrozenParameters> frozen;
  if (attack) frozen.emplace(model);
  Generator gen(perturbation.seed);
  const Device device = model.device();
  // The perturbations are made on the host, from host copies of the data (no copy when it is on the CPU).
  const Tensor images = contiguous(data.images.to(Device::cpu()));
  const std::int64_t side = images.shape()[1], n = data.size();
  double loss_sum = 0;
  std::int64_t correct = 0;
  for (std::int64_t first = batch * comm.rank(); first < n; first += batch * comm.size()) {
    const std::int64_t count = std::min(batch, n - first);
    const Shape shape{count, side, side};
    const Tensor batch_labels = narrow(data.labels, 0, first, count);
    const Tensor labels = batch_labels.to(device);
    const float* begin = images.data<float>() + first * side * side;
    const std::vector<float> clean(begin, begin + count * side * side);
    const std::vector<float> pixels = perturb(model, clean, shape, labels, perturbation, gen);
    NoGradGuard no_grad;
    const Tensor logits = model.forward(from_vector(pixels, shape, device));
    loss_sum += cross_entropy(logits, labels).item() * static_cast<double>(count);
    const auto scores = logits.to_vector<float>();
    const auto targets = batch_labels.to_vector<std::int64_t>();
    const std::int64_t classes = logits.shape()[1];
    for (std::int64_t i = 0; i < count; ++i) {
      const float* row = scores.data() + i * classes;
      correct += (std::max_element(row, row + classes) - row) == targets[static_cast<std::size_t>(i)];
    }
  }
  model.train(was_training);
  if (comm.size() > 1) {
    Tensor sums = from_vector(std::vector<double>{loss_sum, static_cast<double>(correct)}, {2});
    comm.all_reduce(sums, dist::Reduction::sum);
    const auto values = sums.to_vector<double>();
    loss_sum = values[0];
    correct = std::llround(values[1]);
  }
  return {.accuracy = static_cast<double>(correct) / static_cast<double>(n),
          .loss = loss_sum / static_cast<double>(n),
          .count = n};
}

}  // namespace

Accuracy evaluate_vit(ViT& model, const LabeledImages& all, const Perturbation& perturbation, std::int64_t limit,
                      std::int64_t batch) {
  return evaluate_batches(model, all, perturbation, limit, batch, dist::single_process());
}

Accuracy evaluate_vit(ViT& model, const LabeledImages& all, std::int64_t limit, std::int64_t batch,
                      dist::Communicator& comm) {
  return evaluate_batches(model, all, {}, limit, batch, comm);
}

ViTEvalRecord train_vit(const ViTTrainOptions& o, const std::function<void(const TrainProgress&)>& on_step,
                        const std::function<void(const ViTEvalRecord&)>& on_eval) {
  ELLIPSE_CHECK(!o.out_dir.empty(), "train vit: an output directory is required");
  ELLIPSE_CHECK(o.epochs > 0 && o.lr > 0 && o.final_lr >= 0 && o.warmup_epochs >= 0 && o.clip > 0 &&
                    o.limit_train >= 0 && o.limit_test >= 0 && o.stop_after >= 0,
                "train vit: epochs ({}), lr ({}) and clip ({}) must be positive; final lr ({}), warm-up ({}), limits "
                "({}, {}) and stop-after ({}) not negative", o.epochs, o.lr, o.clip, o.final_lr, o.warmup_epochs,
                o.limit_train, o.limit_test, o.stop_after);
  ELLIPSE_CHECK(o.max_shift >= 0 && o.max_shift < kFashionMnistSide,
                "train vit: max shift ({}) must be in [0, {})", o.max_shift, kFashionMnistSide);
  backend_for(o.device);  // an unusable device fails here, before any file is read or written
  const DetectAnomalyGuard anomaly(o.detect_anomaly || anomaly_detection_enabled());
  const RunFiles files(o.out_dir);
  dist::Communicator& comm = o.communicator ? *o.communicator : dist::single_process();
  ViTConfig config;
  if (o.resume) {
    config = parse_vit_config_json(io::read_file(files.config, 1 << 20), files.config);
    ELLIPSE_CHECK(config.name == o.config && config.attention == o.attention &&
                      config.metric == o.metric.value_or(config.metric),
                  "train vit: resuming {}, which holds a {} model with {} attention ({}), but the options ask for {} "
                  "with {} attention", o.out_dir, config.name, config.attention,
                  nn::metric_mode_name(config.metric), o.config, o.attention);
  } else {
    config = vit_preset(o.config);
    config.attention = o.attention;
    config.metric = o.metric.value_or(nn::MetricMode::sequence);
  }
  const std::int64_t batch = o.batch.value_or(config.batch);
  ELLIPSE_CHECK(batch > 0 && batch % comm.size() == 0, "train vit: the batch of {} does not split evenly over {} "
                "ranks", batch, comm.size());
  const std::int64_t rank_batch = batch / comm.size();
  dist::check_same_on_all_ranks(comm, "train vit: the options", flags_fingerprint(o, batch) + " " + o.out_dir);
  const LabeledImages train = first_items(load_fashion_mnist(o.data_dir, "train"), o.limit_train);
  const LabeledImages test = first_items(load_fashion_mnist(o.data_dir, "test"), o.limit_test);
  const std::int64_t steps_per_epoch = train.size() / batch, steps = steps_per_epoch * o.epochs;
  ELLIPSE_CHECK(steps_per_epoch > 0, "train vit: {} training images are fewer than one batch of {}", train.size(),
                batch);
  ELLIPSE_CHECK(o.stop_after <= steps, "train vit: stop_after {} is past the run's last step {}", o.stop_after,
                steps);
  const auto warmup = static_cast<std::int64_t>(std::llround(o.warmup_epochs * static_cast<double>(steps_per_epoch)));

  ViT model(config, o.seed);
  model.to(o.device);
  model.train();
  nn::AdamW optimizer(model.parameters(), {.lr = o.lr, .beta1 = o.beta1, .beta2 = o.beta2, .eps = 1e-8,
                                           .weight_decay = o.weight_decay});
  RunCheckpoints run(o.out_dir, "train vit", flags_fingerprint(o, batch));
  TrainLoop loop;
  loop.end = o.stop_after > 0 ? o.stop_after : steps;
  loop.steps = steps;
  loop.clip = o.clip;
  loop.items_per_step = batch;
  RunningMean train_loss;  // since the last evaluation
  if (o.resume) {
    TrainState state = resume_run(run, model, optimizer, comm);
    ELLIPSE_CHECK(state.generators.count("model") == 1, "{}: the model generator's state is missing", files.state);
    model.generator().set_state(state.generators["model"]);
    loop.start = state.step;
    train_loss.load(state, "loss", files.state);
    ELLIPSE_CHECK(loop.start < steps, "train vit: resuming {}: the run already finished (step {} of {}); nothing to do",
                  o.out_dir, loop.start, steps);
  } else if (comm.rank() == 0) {
    run.start(vit_config_json(config));
  }
  dist::check_same_on_all_ranks(comm, "train vit: the data", fmt::format("{} training and {} test images, hash {}",
                                                                         train.size(), test.size(),
                                                                         dist::fingerprint(train.labels.to_vector<std::int64_t>())));
  dist::check_same_on_all_ranks(comm, "train vit: the model", dist::parameter_signature(model));
  dist::broadcast_parameters(model, comm);
  loop.communicator = &comm;

  std::vector<std::int64_t> order;  // the current epoch's
  ViTEvalRecord last;
  loop.learning_rate = [&](std::int64_t step) { return nn::warmup_cosine_lr(step, warmup, steps, o.lr, o.final_lr); };
  loop.loss = [&](std::int64_t step) {
    const std::int64_t position = step % steps_per_epoch;
    if (order.empty() || position == 0) order = epoch_order(train.size(), o.seed, step / steps_per_epoch);
    Generator augment_gen(mix64(o.seed ^ kAugmentSalt, static_cast<std::uint64_t>(step)));
    // The whole batch's images (the augmentation draws for each image in batch order), then this rank's share.
    const auto indices = std::span(order).subspan(static_cast<std::size_t>(position * batch),
                                                  static_cast<std::size_t>(batch));
    const auto [images, labels] =
        image_batch(train, indices, o.augment ? &augment_gen : nullptr, o.max_shift, o.device);
    const std::int64_t first = comm.rank() * rank_batch;
    return cross_entropy(model.forward(narrow(images, 0, first, rank_batch)), narrow(labels, 0, first, rank_batch));
  };
  loop.evaluate_after = [&](std::int64_t done) { return done % steps_per_epoch == 0; };
  loop.evaluate = [&](const TrainProgress& at, double mean_train_loss) {
    const Accuracy result = evaluate_vit(model, test, 0, 500, comm);
    run.check_finite(result.loss, "the test loss", at.step);
    last = {.step = at.step, .epoch = at.step / steps_per_epoch, .train_loss = mean_train_loss,
            .test_loss = result.loss, .test_acc = result.accuracy, .lr = at.lr, .images_per_s = at.items_per_s,
            .elapsed_s = at.elapsed_s};
    if (on_eval && comm.rank() == 0) on_eval(last);
    return metrics_line(last);
  };
  loop.state = [&](std::int64_t) {
    return TrainState{.step = 0, .generators = {{"model", model.generator().state()}}, .fields = {}};
  };
  loop.on_step = on_step;
  run_train_loop(loop, model, optimizer, run, train_loss);
  return last;
}

}  // namespace ellipse
