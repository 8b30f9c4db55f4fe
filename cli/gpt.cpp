// `ellipse train gpt`, `ellipse eval gpt` and `ellipse sample`: the character GPT from the command line.
#include <cstdio>
#include <fmt/format.h>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "core/io/npy.hpp"
#include "dist/communicator.hpp"
#include "models/gpt_train.hpp"

namespace ellipse::cli {

namespace {

struct TrainFlags {
  GPTTrainOptions options;
  std::string attn = "standard", m_mode, resume;
  std::int64_t batch = 0;
  bool json = false, tf32 = false;
};

// One evaluation as a JSON line, with the keys of metrics.jsonl.
std::string eval_json(const EvalRecord& r) {
  return fmt::format("{{\"step\": {}, \"train_loss\": {:.8f}, \"val_loss\": {:.8f}, \"lr\": {:.6e}, "
                     "\"tokens_per_s\": {:.1f}, \"elapsed_s\": {:.3f}}}",
                     r.step, r.train_loss, r.val_loss, r.lr, r.tokens_per_s, r.elapsed_s);
}

int run_train(TrainFlags flags) {
  settle_train_options(flags, "train gpt", "runs/gpt");
  GPTTrainOptions& o = flags.options;
  // With --json, stdout carries only the evaluations' JSON lines: no plain progress lines.
  Progress progress(flags.json ? 0 : 50);
  const EvalRecord last = train_gpt(
      o,
      [&](const TrainProgress& p) {
        progress.update(p, train_step_detail(p, "tok"));
      },
      [&](const EvalRecord& r) {
        progress.line(flags.json ? eval_json(r)
                                 : fmt::format("eval step {}: train_loss {:.4f}  val_loss {:.4f}  ({:.0f} tok/s, {})",
                                               r.step, r.train_loss, r.val_loss, r.tokens_per_s,
                                               format_duration(r.elapsed_s)));
      });
  if (flags.json || o.communicator->rank() != 0) return 0;
  if (o.stop_after > 0 && last.step != o.stop_after) {
    progress.line(fmt::format("stopped after step {}; checkpoint in {} (continue with --resume {})", o.stop_after,
                              o.out_dir, o.out_dir));
  } else {
    progress.line(fmt::format("done: step {}, val_loss {:.4f}; checkpoint in {}", last.step, last.val_loss, o.out_dir));
  }
  return 0;
}

struct EvalFlags {
  std::string model_dir, text_path, ids_path, logits_path;
  Device device;
};

int run_eval(const EvalFlags& flags) {
  use_device(flags.device);
  LoadedGPT loaded = load_gpt(flags.model_dir, flags.device);
  const GPTConfig& config = loaded.model->config();
  std::string json = fmt::format("\"model\": \"gpt\", \"config\": \"{}\", \"attn\": \"{}\", \"m_mode\": \"{}\"",
                                 config.name, config.attention,
                                 nn::metric_mode_name(config.metric));
  if (!flags.text_path.empty()) {
    const std::u32string text =
        decode_utf8(io::read_file(flags.text_path, std::uint64_t{1} << 31), flags.text_path);
    const TextSplit split = split_train_val(loaded.tokenizer.encode(text));
    ELLIPSE_CHECK(static_cast<std::int64_t>(split.val.size()) > config.seq_len,
                  "eval gpt: {}: its val part (the last 10%) has {} characters, too few for one window of {} "
                  "(+1 target)", flags.text_path, split.val.size(), config.seq_len);
    json += fmt::format(", \"val_loss\": {:.8f}", evaluate_gpt(*loaded.model, split.val));
  }
  if (!flags.ids_path.empty()) {
    // Token ids from another tool (NumPy, PyTorch): the logits go to a .npy file for comparison, and the
    // next-token loss over the rows (position t predicts id t+1) to the JSON line.
    const Tensor ids = io::load_npy(flags.ids_path);
    ELLIPSE_CHECK(ids.dtype() == DType::i64 && ids.dim() == 2 && ids.shape()[1] >= 1,
                  "eval gpt: --ids {}: expected integer token ids of shape [batch, tokens], got {} {}",
                  flags.ids_path, dtype_name(ids.dtype()), to_string(ids.shape()));
    NoGradGuard no_grad;
    const Tensor device_ids = ids.to(flags.device);
    const Tensor logits = loaded.model->forward(device_ids);
    if (!flags.logits_path.empty()) io::save_npy(flags.logits_path, logits);
    const std::int64_t n = ids.shape()[1];
    if (n >= 2) {
      const double loss = cross_entropy(logits.narrow(1, 0, n - 1), device_ids.narrow(1, 1, n - 1)).item();
      json += fmt::format(", \"ids_loss\": {:.8f}", loss);
    }
  }
  fmt::print("{{{}}}\n", json);
  return 0;
}

struct SampleFlags {
  std::string model_dir, prompt;
  SampleOptions options;
  Device device;
};

int run_sample(const SampleFlags& flags) {
  use_device(flags.device);
  LoadedGPT loaded = load_gpt(flags.model_dir, flags.device);
  const std::u32string prompt_text = decode_utf8(flags.prompt, "--prompt");
  const std::u32string text = sample_gpt(*loaded.model, loaded.tokenizer, prompt_text, flags.options);
  fmt::print("{}{}\n", flags.prompt, encode_utf8(text));
  return 0;
}

}  // namespace

void add_gpt_commands(CLI::App& train, CLI::App& eval, CLI::App& app, Action& action) {
  auto flags = std::make_shared<TrainFlags>();
  auto* t = train.add_subcommand("gpt", "Train the character GPT on a UTF-8 text file");
  GPTTrainOptions& o = flags->options;
  t->add_option("--text", o.text_path, "UTF-8 text file (first 90% train, last 10% val)")->required()
      ->check(CLI::ExistingFile);
  t->add_option("--config", o.config, "Model size (gpt-tiny: for tests)")
      ->check(CLI::IsMember({"gpt-s", "gpt-m", "gpt-tiny"}))->capture_default_str();
  t->add_option("--attn", flags->attn, "Attention")->check(CLI::IsMember(nn::attention_kinds()))
      ->capture_default_str();
  t->add_option("--m-mode", flags->m_mode, "Estimator of the elliptical metric (default causal)")
      ->check(CLI::IsMember({"causal", "sequence", "random"}));
  t->add_option("--steps", o.steps, "Training steps (the schedule's length)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}))->capture_default_str();
  t->add_option("--batch", flags->batch, "Batch size (default: the config's)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{65536}));
  t->add_option("--lr", o.lr, "Peak learning rate")->check(CLI::Range(1e-9, 10.0))->check(not_nan())
      ->capture_default_str();
  t->add_option("--dropout", o.dropout, "Dropout on attention and MLP outputs while training")
      ->check(CLI::Range(0.0, 0.95))->check(not_nan())->capture_default_str();
  t->add_option("--seed", o.seed, "Random seed (initialisation and data order)")->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  t->add_option("--eval-every", o.eval_every, "Evaluate and checkpoint every N steps")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}))->capture_default_str();
  t->add_option("--out", o.out_dir, "Output directory (default runs/gpt)");
  t->add_option("--resume", flags->resume, "Continue the run saved in this directory")->check(CLI::ExistingDirectory);
  t->add_option("--stop-after", o.stop_after, "Save and stop after this step, as an interruption would")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}));
  t->add_flag("--detect-anomaly", o.detect_anomaly,
              "Check every op's output and gradients for NaN/Inf and name the first op that produces one (slow)");
  t->add_flag("--json", flags->json, "Print each evaluation as a JSON line (the keys of metrics.jsonl), nothing else");
  add_device_option(*t, o.device);
  add_tf32_flag(*t, flags->tf32);
  t->callback([&action, flags] { action = [flags] { return run_train(*flags); }; });

  auto eval_flags = std::make_shared<EvalFlags>();
  auto* e = eval.add_subcommand("gpt", "Evaluate a trained GPT; prints one JSON line (val_loss with --text, "
                                       "ids_loss with --ids)");
  e->add_option("--model", eval_flags->model_dir, "Checkpoint directory")->required()->check(CLI::ExistingDirectory);
  auto* text =
      e->add_option("--text", eval_flags->text_path, "The text it was trained on (its last 10% is the val split)")
          ->check(CLI::ExistingFile);
  auto* ids = e->add_option("--ids", eval_flags->ids_path, "Token ids [batch, tokens] as .npy (int64 or int32)")
                  ->check(CLI::ExistingFile);
  e->add_option("--logits", eval_flags->logits_path, "Write the logits [batch, tokens, vocab] for --ids to this .npy")
      ->needs(ids);
  add_device_option(*e, eval_flags->device);
  e->callback([&action, eval_flags, text, ids] {
    if (text->count() == 0 && ids->count() == 0) throw CLI::RequiredError("--text or --ids");
    action = [eval_flags] { return run_eval(*eval_flags); };
  });

  auto sample = std::make_shared<SampleFlags>();
  auto* s = app.add_subcommand("sample", "Continue a prompt with a trained GPT");
  s->add_option("--model", sample->model_dir, "Checkpoint directory")->required()->check(CLI::ExistingDirectory);
  s->add_option("--prompt", sample->prompt, "Text to continue")->required();
  s->add_option("--tokens", sample->options.tokens, "Characters to generate")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{10000000}))->capture_default_str();
  s->add_option("--temperature", sample->options.temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0))->check(not_nan())->capture_default_str();
  s->add_option("--top-k", sample->options.top_k, "Sample among the k most likely (0: all)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1000000}))->capture_default_str();
  s->add_option("--seed", sample->options.seed, "Random seed")->check(CLI::NonNegativeNumber)->capture_default_str();
  add_device_option(*s, sample->device);
  s->callback([&action, sample] { action = [sample] { return run_sample(*sample); }; });
}

}  // namespace ellipse::cli
