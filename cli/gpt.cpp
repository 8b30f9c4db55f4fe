// `ellipse train gpt`, `ellipse eval gpt` and `ellipse sample`: the character GPT from the command line.
#include <cstdio>
#include <fmt/format.h>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/error.hpp"
#include "core/io/file.hpp"
#include "models/gpt_train.hpp"

namespace ellipse::cli {

namespace {

struct TrainFlags {
  GPTTrainOptions options;
  std::string attn = "standard", m_mode, resume;
  std::int64_t batch = 0;
};

int run_train(TrainFlags flags) {
  GPTTrainOptions& o = flags.options;
  o.attention = nn::parse_attention_kind(flags.attn);
  if (!flags.m_mode.empty()) o.metric = nn::parse_metric_mode(flags.m_mode);
  if (flags.batch > 0) o.batch = flags.batch;
  resolve_run_dir(o.out_dir, o.resume, flags.resume, "train gpt", "runs/gpt");
  Progress progress(o.steps, 50);
  const EvalRecord last = train_gpt(
      o,
      [&](const TrainProgress& p) {
        progress.update(p.step, p.elapsed_s,
                        fmt::format("loss {:.4f}  lr {:.2e}  {:.0f} tok/s", p.loss, p.lr, p.items_per_s));
      },
      [&](const EvalRecord& r) {
        progress.line(fmt::format("eval step {}: train_loss {:.4f}  val_loss {:.4f}  ({:.0f} tok/s, {})", r.step,
                                  r.train_loss, r.val_loss, r.tokens_per_s, format_duration(r.elapsed_s)));
      });
  if (o.stop_after > 0 && last.step != o.stop_after) {
    progress.line(fmt::format("stopped after step {}; checkpoint in {} (continue with --resume {})", o.stop_after,
                              o.out_dir, o.out_dir));
  } else {
    progress.line(fmt::format("done: step {}, val_loss {:.4f}; checkpoint in {}", last.step, last.val_loss, o.out_dir));
  }
  return 0;
}

int run_eval(const std::string& model_dir, const std::string& text_path) {
  LoadedGPT loaded = load_gpt(model_dir);
  const std::u32string text = decode_utf8(io::read_file(text_path, std::uint64_t{1} << 31), text_path);
  const TextSplit split = split_train_val(loaded.tokenizer.encode(text));
  const double val_loss = evaluate_gpt(*loaded.model, split.val);
  fmt::print("{{\"model\": \"gpt\", \"config\": \"{}\", \"attn\": \"{}\", \"m_mode\": \"{}\", \"val_loss\": {:.8f}}}\n",
             loaded.model->config().name, nn::attention_kind_name(loaded.model->config().attention),
             nn::metric_mode_name(loaded.model->config().metric), val_loss);
  return 0;
}

int run_sample(const std::string& model_dir, const std::string& prompt, const SampleOptions& options) {
  LoadedGPT loaded = load_gpt(model_dir);
  const std::u32string prompt_text = decode_utf8(prompt, "--prompt");
  const std::u32string text = sample_gpt(*loaded.model, loaded.tokenizer, prompt_text, options);
  fmt::print("{}{}\n", prompt, encode_utf8(text));
  return 0;
}

}  // namespace

void add_gpt_commands(CLI::App& train, CLI::App& eval, CLI::App& app, Action& action) {
  auto flags = std::make_shared<TrainFlags>();
  auto* t = train.add_subcommand("gpt", "Train the character GPT on a UTF-8 text file");
  GPTTrainOptions& o = flags->options;
  t->add_option("--text", o.text_path, "UTF-8 text file (first 90% train, last 10% val)")->required()
      ->check(CLI::ExistingFile);
  t->add_option("--config", o.config, "Model size")->check(CLI::IsMember({"gpt-s", "gpt-m"}))->capture_default_str();
  t->add_option("--attn", flags->attn, "Attention")->check(CLI::IsMember({"standard", "elliptical"}))
      ->capture_default_str();
  t->add_option("--m-mode", flags->m_mode, "Estimator of the elliptical metric (default causal)")
      ->check(CLI::IsMember({"causal", "sequence", "random"}));
  t->add_option("--steps", o.steps, "Training steps (the schedule's length)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}))->capture_default_str();
  t->add_option("--batch", flags->batch, "Batch size (default: the config's)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{65536}));
  t->add_option("--lr", o.lr, "Peak learning rate")->check(CLI::Range(1e-9, 10.0))->capture_default_str();
  t->add_option("--seed", o.seed, "Random seed (initialisation and data order)")->capture_default_str();
  t->add_option("--eval-every", o.eval_every, "Evaluate and checkpoint every N steps")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}))->capture_default_str();
  t->add_option("--out", o.out_dir, "Output directory (default runs/gpt)");
  t->add_option("--resume", flags->resume, "Continue the run saved in this directory")->check(CLI::ExistingDirectory);
  t->add_option("--stop-after", o.stop_after, "Save and stop after this step, as an interruption would")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}));
  t->callback([&action, flags] { action = [flags] { return run_train(*flags); }; });

  auto model_dir = std::make_shared<std::string>();
  auto text_path = std::make_shared<std::string>();
  auto* e = eval.add_subcommand("gpt", "Print the validation loss of a trained GPT as one JSON line");
  e->add_option("--model", *model_dir, "Checkpoint directory")->required()->check(CLI::ExistingDirectory);
  e->add_option("--text", *text_path, "The text it was trained on (its last 10% is the val split)")->required()
      ->check(CLI::ExistingFile);
  e->callback([&action, model_dir, text_path] { action = [=] { return run_eval(*model_dir, *text_path); }; });

  auto prompt = std::make_shared<std::string>();
  auto sample = std::make_shared<SampleOptions>();
  auto sample_dir = std::make_shared<std::string>();
  auto* s = app.add_subcommand("sample", "Continue a prompt with a trained GPT");
  s->add_option("--model", *sample_dir, "Checkpoint directory")->required()->check(CLI::ExistingDirectory);
  s->add_option("--prompt", *prompt, "Text to continue")->required();
  s->add_option("--tokens", sample->tokens, "Characters to generate")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{10000000}))->capture_default_str();
  s->add_option("--temperature", sample->temperature, "Sampling temperature (0: greedy)")
      ->check(CLI::Range(0.0, 100.0))->capture_default_str();
  s->add_option("--top-k", sample->top_k, "Sample among the k most likely (0: all)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{1000000}))->capture_default_str();
  s->add_option("--seed", sample->seed, "Random seed")->capture_default_str();
  s->callback([&action, sample_dir, prompt, sample] {
    action = [=] { return run_sample(*sample_dir, *prompt, *sample); };
  });
}

}  // namespace ellipse::cli
