// ellipse.models: the training loop the trainers share, for one's own models too; the character GPT (its config,
// construction, checkpoints), its text data, and its training, evaluation and sampling as the `ellipse` program runs
// them; the ViT, its checkpoints and its training. Text crosses as Python str (UTF-8 in C++).
#include <nanobind/stl/function.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/string_view.h>
#include <nanobind/stl/unique_ptr.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "models/checkpoint.hpp"
#include "models/gpt.hpp"
#include "models/gpt_train.hpp"
#include "models/text.hpp"
#include "models/train_run.hpp"
#include "models/vit.hpp"
#include "models/vit_train.hpp"

namespace ellipse::python {
namespace {

using namespace nb::literals;
using Release = nb::call_guard<nb::gil_scoped_release>;
using Ids = std::vector<std::int64_t>;

std::u32string from_utf8(const std::string& text) { return decode_utf8(text, "the Python string"); }

nb::dict eval_record(const EvalRecord& r) {
  nb::dict record;
  record["step"] = r.step;
  record["train_loss"] = r.train_loss;
  record["val_loss"] = r.val_loss;
  record["lr"] = r.lr;
  record["tokens_per_s"] = r.tokens_per_s;
  record["elapsed_s"] = r.elapsed_s;
  return record;
}

// The training loop of both trainers, for one's own model, optimizer and data: run directories, checkpoints that
// resume bit for bit, metrics.jsonl and the stop on a NaN or Inf. Its callbacks take the GIL when called.
void bind_train_loop(nb::module_& m) {
  nb::class_<TrainProgress>(m, "TrainProgress", "Reported after every training step.")
      .def_ro("step", &TrainProgress::step, "Steps done (1 after the first).")
      .def_ro("steps", &TrainProgress::steps, "The schedule's length.")
      .def_ro("start_step", &TrainProgress::start_step, "Steps already done when this process began (a resume).")
      .def_ro("loss", &TrainProgress::loss)
      .def_ro("lr", &TrainProgress::lr)
      .def_ro("items_per_s", &TrainProgress::items_per_s, "Items (images, tokens) per second since start_step.")
      .def_ro("elapsed_s", &TrainProgress::elapsed_s, "The run's training time, earlier processes' included.")
      .def_ro("start_elapsed_s", &TrainProgress::start_elapsed_s, "Of elapsed_s, the earlier processes'.")
      .def_prop_ro("seconds_left", &seconds_left, "Until the last step, at this process's pace (NaN before it steps).");
  m.def("format_duration", &format_duration, "seconds"_a, "'1h02m', '3m10s' or '42s' ('?' if negative, NaN or Inf).");
  nb::class_<RunFiles>(m, "RunFiles", "A run directory's files.")
      .def_ro("dir", &RunFiles::dir)
      .def_ro("config", &RunFiles::config)
      .def_ro("model", &RunFiles::model)
      .def_ro("state", &RunFiles::state, "train_state.safetensors: what a resume needs.")
      .def_ro("metrics", &RunFiles::metrics);
  nb::class_<RunningMean>(
      m, "RunningMean",
      "The mean of the train losses since the last evaluation, checkpointed as the exact bits of its sum: a resumed "
      "run passes the one its state holds (load(state, 'loss', run.files.state)).")
      .def(nb::init<>())
      .def("add", &RunningMean::add, "value"_a)
      .def("take", &RunningMean::take, "The mean so far (0 when empty); starts again.")
      .def("save", &RunningMean::save, "state"_a, "key"_a, "Stores it in the TrainState's fields under key.")
      .def("load", &RunningMean::load, "state"_a, "key"_a, "path"_a, "Reads it back; errors name path.");
  nb::class_<RunCheckpoints>(
      m, "RunCheckpoints",
      "One run directory's checkpoints and metrics: start() or resume(), then save(). The fingerprint (the run's "
      "settings as text) is stored in every checkpoint and must match on resume; command prefixes the errors.")
      .def(nb::init<const std::string&, std::string, std::string>(), "dir"_a, "command"_a, "fingerprint"_a = "")
      .def_prop_ro("files", &RunCheckpoints::files)
      .def_prop_ro("saved_step", &RunCheckpoints::saved_step, "0 before the first checkpoint.")
      .def_prop_ro("resumed_elapsed_s", &RunCheckpoints::resumed_elapsed_s,
                   "After resume: the training time before it (the last metrics line's elapsed_s).")
      .def("start", &RunCheckpoints::start, "config_json"_a = "{}\n", Release(),
           "Creates the directory (refusing one that holds a run) and writes config.json.")
      .def("resume", &RunCheckpoints::resume, "model"_a, "optimizer"_a, Release(),
           "Loads the last checkpoint into model and optimizer, checks the fingerprint, and returns the TrainState.")
      .def("save", &RunCheckpoints::save, "model"_a, "optimizer"_a, "state"_a, "metrics_line"_a = "", Release(),
           "Appends metrics_line (a JSON object whose step is state.step) to metrics.jsonl, then checkpoints.");
  nb::class_<TrainLoop>(
      m, "TrainLoop",
      "What run_train_loop runs: steps start to end of a schedule of `steps`. learning_rate, loss, evaluate_after, "
      "evaluate and state must be set; on_step is optional. Data-parallel training is C++'s for now.")
      .def(nb::init<>())
      .def_rw("start", &TrainLoop::start, "The first step: 0, or the resumed state's step.")
      .def_rw("end", &TrainLoop::end, "Stop after this many steps (the schedule's length, or earlier).")
      .def_rw("steps", &TrainLoop::steps, "The schedule's length.")
      .def_rw("clip", &TrainLoop::clip, "The largest global gradient norm.")
      .def_rw("items_per_step", &TrainLoop::items_per_step, "Images or tokens, for TrainProgress.items_per_s.")
      .def_rw("learning_rate", &TrainLoop::learning_rate, "learning_rate(step) -> float (step 0-based).")
      .def_rw("loss", &TrainLoop::loss, "loss(step) -> a scalar Tensor with its graph: the step's forward pass.")
      .def_rw("evaluate_after", &TrainLoop::evaluate_after, "evaluate_after(done) -> bool: evaluate after done steps.")
      .def_rw("evaluate", &TrainLoop::evaluate,
              "evaluate(progress, train_loss) -> the metrics.jsonl line: a JSON object whose step is progress.step "
              "(put progress.elapsed_s in it, so that a resumed run's time goes on).")
      .def_rw("state", &TrainLoop::state,
              "state(done) -> nn.TrainState: the generators and fields to checkpoint besides the step and the loss.")
      .def_rw("on_step", &TrainLoop::on_step, "on_step(progress) after every step, or None.");
  m.def("run_train_loop", &run_train_loop, "loop"_a, "model"_a, "optimizer"_a, "run"_a, "train_loss"_a = RunningMean(),
        Release(),
        "Per step: the learning rate, zero_grad, loss(step), a stop on a NaN or Inf, backward, clipping, the "
        "optimizer's step, on_step. After the steps evaluate_after accepts and the schedule's last, evaluate writes "
        "its line and the run is checkpointed (with state(done), the step and the train loss under 'loss'); a run "
        "stopped at end between evaluations is checkpointed without a line. Any optimizer, one written in Python too.");
}

}  // namespace

void bind_models(nb::module_& m) {
  bind_train_loop(m);
  nb::class_<CharTokenizer>(m, "CharTokenizer", "A tokenizer over Unicode code points (one id per character).")
      .def_static("from_text", [](const std::string& text) { return CharTokenizer::from_text(from_utf8(text)); },
                  "text"_a, "The vocabulary: the sorted unique characters of text.")
      .def_static("from_vocab", [](const std::string& vocab) { return CharTokenizer::from_vocab(from_utf8(vocab)); },
                  "vocab"_a, "The vocabulary given in id order (as config.json stores it).")
      .def_prop_ro("size", &CharTokenizer::size)
      .def_prop_ro("vocab", [](const CharTokenizer& self) { return encode_utf8(self.vocab()); })
      .def("encode", [](const CharTokenizer& self, const std::string& text) { return self.encode(from_utf8(text)); },
           "text"_a)
      .def("decode", [](const CharTokenizer& self, const Ids& ids) { return encode_utf8(self.decode(ids)); }, "ids"_a);
  m.def(
      "split_train_val",
      [](const Ids& ids) {
        TextSplit split = split_train_val(ids);
        return std::pair(std::move(split.train), std::move(split.val));
      },
      "ids"_a, "(train, val): the first 90% of the ids and the last 10%.");
  m.def(
      "sample_windows",
      [](const Ids& ids, std::int64_t batch, std::int64_t seq_len, Generator& gen, Device device) {
        return sample_windows(ids, batch, seq_len, gen, device);
      },
      "ids"_a, "batch"_a, "seq_len"_a, "gen"_a, "device"_a = Device::cpu(), Release(),
      "(inputs, targets) [batch, seq_len]: windows at offsets drawn from gen, targets shifted by one.");

  nb::class_<GPTConfig>(m, "GPTConfig", "A GPT's shape: see gpt_preset.")
      .def_rw("name", &GPTConfig::name)
      .def_rw("vocab", &GPTConfig::vocab)
      .def_rw("n_layer", &GPTConfig::n_layer)
      .def_rw("d_model", &GPTConfig::d_model)
      .def_rw("n_head", &GPTConfig::n_head)
      .def_rw("seq_len", &GPTConfig::seq_len)
      .def_rw("batch", &GPTConfig::batch)
      .def_rw("dropout", &GPTConfig::dropout)
      .def_rw("attention", &GPTConfig::attention,
              "A kind of nn.attention_kinds(): 'standard', 'elliptical' or one registered")
      .def_prop_rw(
          "metric", [](const GPTConfig& c) { return std::string(nn::metric_mode_name(c.metric)); },
          [](GPTConfig& c, const std::string& mode) { c.metric = nn::parse_metric_mode(mode); },
          "The elliptical metric's estimator: 'causal', 'sequence' or 'random'.");
  m.def("gpt_preset", &gpt_preset, "name"_a, "vocab"_a, "'gpt-s', 'gpt-m' or 'gpt-tiny' for this vocabulary size.");

  nb::class_<GPT, nn::Module>(m, "GPT", "The character-level GPT: ids [B, N] (i64) -> logits [B, N, V].")
      .def(nb::init<const GPTConfig&, std::uint64_t>(), "config"_a, "seed"_a = 0)
      .def_prop_ro("config", &GPT::config)
      .def("forward", &GPT::forward, "ids"_a, Release())
      .def("__call__", &GPT::forward, "ids"_a, Release())
      .def("block", &GPT::block, "i"_a, nb::rv_policy::reference_internal, "The i-th transformer block (0 first).")
      .def("generator", &GPT::generator, nb::rv_policy::reference_internal, "Drives dropout after initialisation.");
  m.def(
      "load_gpt",
      [](const std::string& dir, Device device) {
        LoadedGPT loaded = load_gpt(dir, device);
        return std::pair(std::move(loaded.model), std::move(loaded.tokenizer));
      },
      "dir"_a, "device"_a = Device::cpu(), Release(),
      "(model, tokenizer) from dir/config.json and dir/model.safetensors; the model is in eval mode.");
  m.def("save_gpt", &save_gpt, "dir"_a, "model"_a, "tokenizer"_a, Release(),
        "Writes dir/config.json and dir/model.safetensors, what load_gpt and the ellipse program read (each file "
        "atomically; a folder holding a training run's state is refused).");
  m.def(
      "evaluate_gpt", [](GPT& model, const Ids& ids, std::int64_t batch) { return evaluate_gpt(model, ids, batch); },
      "model"_a, "ids"_a, "batch"_a = 32, Release(),
      "Mean cross-entropy over the non-overlapping windows of seq_len tokens of ids.");
  m.def(
      "sample_gpt",
      [](GPT& model, const CharTokenizer& tokenizer, const std::string& prompt, std::int64_t tokens,
         double temperature, std::int64_t top_k, std::uint64_t seed) {
        return encode_utf8(sample_gpt(model, tokenizer, from_utf8(prompt), {tokens, temperature, top_k, seed}));
      },
      "model"_a, "tokenizer"_a, "prompt"_a, "tokens"_a = 200, "temperature"_a = 1.0, "top_k"_a = 0, "seed"_a = 0,
      Release(), "Continues prompt by tokens characters (temperature 0: the most likely each time).");
  m.def(
      "train_gpt",
      [](const std::string& text_path, const std::string& out_dir, const std::string& config,
         const std::string& attention, std::int64_t steps, std::optional<std::int64_t> batch, double lr,
         double final_lr, std::int64_t warmup, double weight_decay, double clip, std::uint64_t seed,
         std::int64_t eval_every, bool resume, Device device,
         const std::function<void(std::int64_t, double, double)>& on_step) {
        GPTTrainOptions options;
        options.text_path = text_path;
        options.out_dir = out_dir;
        options.config = config;
        options.attention = attention;
        options.steps = steps;
        options.batch = batch;
        options.lr = lr;
        options.final_lr = final_lr;
        options.warmup = warmup;
        options.weight_decay = weight_decay;
        options.clip = clip;
        options.seed = seed;
        options.eval_every = eval_every;
        options.resume = resume;
        options.device = device;
        EvalRecord last;
        {
          nb::gil_scoped_release release;
          last = train_gpt(
              options,
              [&](const TrainProgress& at) {
                if (!on_step) return;
                nb::gil_scoped_acquire gil;
                on_step(at.step, at.loss, at.lr);
              },
              {});
        }
        return eval_record(last);
      },
      "text_path"_a, "out_dir"_a, "config"_a = "gpt-s", "attention"_a = "standard", "steps"_a = 2000,
      "batch"_a = nb::none(), "lr"_a = 1e-3, "final_lr"_a = 1e-4, "warmup"_a = 100, "weight_decay"_a = 0.1,
      "clip"_a = 1.0, "seed"_a = 0, "eval_every"_a = 200, "resume"_a = false, "device"_a = Device::cpu(),
      "on_step"_a = nb::none(),
      "Trains the GPT as `ellipse train gpt` does (AdamW with betas (0.9, 0.99), warm-up + cosine schedule, "
      "checkpoints in out_dir); on_step(step, loss, lr) after every step. Returns the last evaluation.");

  nb::class_<ViTConfig>(m, "ViTConfig", "A ViT's shape: see vit_preset.")
      .def_rw("name", &ViTConfig::name)
      .def_rw("image", &ViTConfig::image)
      .def_rw("patch", &ViTConfig::patch)
      .def_rw("n_layer", &ViTConfig::n_layer)
      .def_rw("d_model", &ViTConfig::d_model)
      .def_rw("n_head", &ViTConfig::n_head)
      .def_rw("classes", &ViTConfig::classes)
      .def_rw("batch", &ViTConfig::batch)
      .def_rw("dropout", &ViTConfig::dropout)
      .def_rw("attention", &ViTConfig::attention,
              "A kind of nn.attention_kinds(): 'standard', 'elliptical' or one registered")
      .def_prop_rw(
          "metric", [](const ViTConfig& c) { return std::string(nn::metric_mode_name(c.metric)); },
          [](ViTConfig& c, const std::string& mode) { c.metric = nn::parse_metric_mode(mode); },
          "The elliptical metric's estimator: 'sequence', 'causal' or 'random'.");
  m.def("vit_preset", &vit_preset, "name"_a, "'vit-s' or 'vit-xs'.");
  nb::class_<ViT, nn::Module>(m, "ViT", "The vision transformer: images [B, image, image] f32 -> logits [B, classes].")
      .def(nb::init<const ViTConfig&, std::uint64_t>(), "config"_a, "seed"_a = 0)
      .def_prop_ro("config", &ViT::config)
      .def("forward", &ViT::forward, "images"_a, Release())
      .def("__call__", &ViT::forward, "images"_a, Release())
      .def("block", &ViT::block, "i"_a, nb::rv_policy::reference_internal, "The i-th transformer block (0 first).");
  m.def("load_vit", &load_vit, "dir"_a, "device"_a = Device::cpu(), Release(),
        "The ViT of dir/config.json and dir/model.safetensors, in eval mode.");
  m.def("save_vit", &save_vit, "dir"_a, "model"_a, Release(),
        "Writes dir/config.json and dir/model.safetensors, what load_vit and the ellipse program read.");
  m.def(
      "train_vit",
      [](const std::string& out_dir, const std::string& data_dir, const std::string& config,
         const std::string& attention, std::int64_t epochs, std::optional<std::int64_t> batch, double lr,
         std::uint64_t seed, std::int64_t limit_train, std::int64_t limit_test, bool resume, Device device,
         const std::function<void(std::int64_t, double, double)>& on_step) {
        ViTTrainOptions options;
        options.out_dir = out_dir;
        options.data_dir = data_dir;
        options.config = config;
        options.attention = attention;
        options.epochs = epochs;
        options.batch = batch;
        options.lr = lr;
        options.seed = seed;
        options.limit_train = limit_train;
        options.limit_test = limit_test;
        options.resume = resume;
        options.device = device;
        ViTEvalRecord last;
        {
          nb::gil_scoped_release release;
          last = train_vit(
              options,
              [&](const TrainProgress& at) {
                if (!on_step) return;
                nb::gil_scoped_acquire gil;
                on_step(at.step, at.loss, at.lr);
              },
              {});
        }
        nb::dict record;
        record["step"] = last.step;
        record["epoch"] = last.epoch;
        record["train_loss"] = last.train_loss;
        record["test_loss"] = last.test_loss;
        record["test_acc"] = last.test_acc;
        record["images_per_s"] = last.images_per_s;
        return record;
      },
      "out_dir"_a, "data_dir"_a = std::string(kFashionMnistDir), "config"_a = "vit-s", "attention"_a = "standard",
      "epochs"_a = 10, "batch"_a = nb::none(), "lr"_a = 1e-3, "seed"_a = 0, "limit_train"_a = 0, "limit_test"_a = 0,
      "resume"_a = false, "device"_a = Device::cpu(), "on_step"_a = nb::none(),
      "Trains the ViT on Fashion-MNIST as `ellipse train vit` does, evaluating and checkpointing after every epoch; "
      "on_step(step, loss, lr) after every step. Returns the last evaluation.");

  m.def(
      "load_fashion_mnist",
      [](const std::string& dir, const std::string& split) {
        const LabeledImages data = load_fashion_mnist(dir, split);
        return std::pair(data.images, data.labels);
      },
      "dir"_a = std::string(kFashionMnistDir), "split"_a = "train", Release(),
      "(images [n, 28, 28] f32 in [0, 1], labels [n] i64) of split 'train' (60,000) or 'test' (10,000).");
  m.def(
      "image_batch",
      [](const Tensor& images, const Tensor& labels, const Ids& indices, Generator* gen, std::int64_t max_shift,
         Device device) {
        const LabeledImages batch = image_batch({.images = images, .labels = labels}, indices, gen, max_shift, device);
        return std::pair(batch.images, batch.labels);
      },
      "images"_a, "labels"_a, "indices"_a, "gen"_a = nb::none(), "max_shift"_a = 2, "device"_a = Device::cpu(),
      Release(),
      "A training batch as train_vit draws it: (images, labels) at indices; with gen, each image mirrored left-right "
      "with probability 1/2 and shifted by up to max_shift pixels along each axis.");
  m.def(
      "perturb_images",
      [](ViT& model, const Tensor& images, const Tensor& labels, const std::string& perturbation, Generator& gen) {
        return perturb_images(model, images, labels, Perturbation::parse(perturbation), gen);
      },
      "model"_a, "images"_a, "labels"_a, "perturbation"_a, "gen"_a, Release(),
      "The images as evaluate_vit perturbs them: perturbation 'clean', 'gaussian:SIGMA', 'fgsm:EPS' or "
      "'pgd:EPS[,STEPS[,STEP]]' (EPS may be written 8/255); pixels stay in [0, 1].");
  m.def(
      "evaluate_vit",
      [](ViT& model, const Tensor& images, const Tensor& labels, const std::string& perturbation,
         std::uint64_t seed, std::int64_t limit, std::int64_t batch) {
        Perturbation how = Perturbation::parse(perturbation);
        how.seed = seed;
        Accuracy result;
        {
          nb::gil_scoped_release release;
          result = evaluate_vit(model, {.images = images, .labels = labels}, how, limit, batch);
        }
        nb::dict record;
        record["accuracy"] = result.accuracy;
        record["loss"] = result.loss;
        record["count"] = result.count;
        return record;
      },
      "model"_a, "images"_a, "labels"_a, "perturbation"_a = "clean", "seed"_a = 0, "limit"_a = 0, "batch"_a = 500,
      "Accuracy and mean cross-entropy of model (put in eval mode) on the first limit images (all when 0), perturbed "
      "as perturb_images says; seed draws the noise and PGD's random starts.");
}

}  // namespace ellipse::python
