// `ellipse train vit` and `ellipse eval vit`: the ViT on Fashion-MNIST from the command line.
#include <fmt/format.h>

#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/progress.hpp"
#include "core/error.hpp"
#include "dist/communicator.hpp"
#include "models/vit_train.hpp"

namespace ellipse::cli {

namespace {

struct TrainFlags {
  ViTTrainOptions options;
  std::string attn = "standard", m_mode, resume;
  std::int64_t batch = 0;
  bool tf32 = false;
};

int run_train(TrainFlags flags) {
  settle_train_options(flags, "train vit", "runs/vit");
  ViTTrainOptions& o = flags.options;
  Progress bar(50);
  std::int64_t steps = 0;
  const ViTEvalRecord last = train_vit(
      o,
      [&](const TrainProgress& p) {
        steps = p.steps;
        bar.update(p, train_step_detail(p, "img"));
      },
      [&](const ViTEvalRecord& r) {
        bar.line(fmt::format("epoch {} (step {}): train_loss {:.4f}  test_loss {:.4f}  test_acc {:.2f}%  ({:.0f} "
                             "img/s, {})", r.epoch, r.step, r.train_loss, r.test_loss, 100 * r.test_acc,
                             r.images_per_s, format_duration(r.elapsed_s)));
      });
  if (o.communicator->rank() != 0) return 0;
  // Stopped early, also when the stop falls at the end of an epoch (last.step == stop_after there).
  if (o.stop_after > 0 && (steps == 0 || o.stop_after < steps)) {
    bar.line(fmt::format("stopped after step {}; checkpoint in {} (continue with --resume {})", o.stop_after,
                         o.out_dir, o.out_dir));
  } else {
    bar.line(fmt::format("done: epoch {}, test_acc {:.2f}%; checkpoint in {}", last.epoch, 100 * last.test_acc,
                         o.out_dir));
  }
  return 0;
}

struct EvalFlags {
  std::string model_dir, data_dir{kFashionMnistDir}, noise, attack;
  std::int64_t limit = 0, batch = 500;
  std::uint64_t seed = 0;
  Device device;
};

int run_eval(const EvalFlags& flags) {
  use_device(flags.device);
  ELLIPSE_CHECK(flags.noise.empty() || flags.attack.empty(), "eval vit: give --noise or --attack, not both");
  Perturbation perturbation;
  if (!flags.noise.empty()) {
    perturbation = Perturbation::parse(flags.noise);
    ELLIPSE_CHECK(perturbation.kind == Perturbation::Kind::gaussian, "eval vit: --noise expects gaussian:SIGMA, got "
                  "'{}'", flags.noise);
  } else if (!flags.attack.empty()) {
    perturbation = Perturbation::parse(flags.attack);
    ELLIPSE_CHECK(perturbation.kind == Perturbation::Kind::fgsm || perturbation.kind == Perturbation::Kind::pgd,
                  "eval vit: --attack expects fgsm:EPS or pgd:EPS[,STEPS[,STEP]], got '{}'", flags.attack);
  }
  perturbation.seed = flags.seed;
  const auto model = load_vit(flags.model_dir, flags.device);
  const LabeledImages test = load_fashion_mnist(flags.data_dir, "test");
  const Accuracy result = evaluate_vit(*model, test, perturbation, flags.limit, flags.batch);
  nlohmann::ordered_json json;
  json["model"] = "vit";
  json["config"] = model->config().name;
  json["attn"] = model->config().attention;
  json["m_mode"] = nn::metric_mode_name(model->config().metric);
  json["perturbation"] = perturbation.str();
  json["images"] = result.count;
  json["accuracy"] = result.accuracy;
  json["loss"] = result.loss;
  fmt::print("{}\n", json.dump());
  return 0;
}

}  // namespace

void add_vit_commands(CLI::App& train, CLI::App& eval, Action& action) {
  auto flags = std::make_shared<TrainFlags>();
  ViTTrainOptions& o = flags->options;
  auto* t = train.add_subcommand("vit", "Train the ViT on Fashion-MNIST");
  t->add_option("--data", o.data_dir, "Directory of the four Fashion-MNIST .gz files")->capture_default_str();
  t->add_option("--config", o.config, "Model size")->check(CLI::IsMember({"vit-s", "vit-xs"}))->capture_default_str();
  t->add_option("--attn", flags->attn, "Attention")->check(CLI::IsMember(nn::attention_kinds()))
      ->capture_default_str();
  t->add_option("--m-mode", flags->m_mode, "Estimator of the elliptical metric (default sequence)")
      ->check(CLI::IsMember({"sequence", "causal", "random"}));
  t->add_option("--epochs", o.epochs, "Epochs (the schedule's length)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000}))->capture_default_str();
  t->add_option("--batch", flags->batch, "Batch size (default: the config's, 128)")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{65536}));
  t->add_option("--lr", o.lr, "Peak learning rate")->check(CLI::Range(1e-9, 10.0))->check(not_nan())
      ->capture_default_str();
  t->add_option("--warmup-epochs", o.warmup_epochs, "Linear warm-up, in epochs")->check(CLI::Range(0.0, 1000.0))
      ->check(not_nan())->capture_default_str();
  t->add_option("--weight-decay", o.weight_decay, "AdamW's decoupled weight decay")->check(CLI::Range(0.0, 10.0))
      ->check(not_nan())->capture_default_str();
  t->add_flag("--augment", o.augment, "Random shifts of up to --max-shift pixels and horizontal flips");
  t->add_option("--max-shift", o.max_shift, "With --augment, the largest shift in pixels (0: flips only)")
      ->check(CLI::Range(std::int64_t{0}, std::int64_t{13}))->capture_default_str();
  t->add_option("--seed", o.seed, "Random seed (initialisation, data order and augmentation)")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  t->add_option("--limit-train", o.limit_train, "Train on the first N images only")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}));
  t->add_option("--limit-test", o.limit_test, "Evaluate on the first N test images only")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}));
  t->add_option("--out", o.out_dir, "Output directory (default runs/vit)");
  t->add_option("--resume", flags->resume, "Continue the run saved in this directory")->check(CLI::ExistingDirectory);
  t->add_option("--stop-after", o.stop_after, "Save and stop after this step, as an interruption would")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}));
  t->add_flag("--detect-anomaly", o.detect_anomaly,
              "Check every op's output and gradients for NaN/Inf and name the first op that produces one (slow)");
  add_device_option(*t, o.device);
  add_tf32_flag(*t, flags->tf32);
  t->callback([&action, flags] { action = [flags] { return run_train(*flags); }; });

  auto eval_flags = std::make_shared<EvalFlags>();
  auto* e = eval.add_subcommand("vit", "Print the test accuracy of a trained ViT, clean or perturbed, as one JSON line");
  e->add_option("--model", eval_flags->model_dir, "Checkpoint directory")->required()->check(CLI::ExistingDirectory);
  e->add_option("--data", eval_flags->data_dir, "Directory of the Fashion-MNIST .gz files")->capture_default_str();
  e->add_option("--noise", eval_flags->noise, "Gaussian pixel noise: gaussian:SIGMA (clipped to [0, 1])");
  e->add_option("--attack", eval_flags->attack,
                "fgsm:EPS or pgd:EPS[,STEPS[,STEP]] (default 20 steps of EPS/4, random start); EPS may be 8/255");
  e->add_option("--limit", eval_flags->limit, "Evaluate the first N test images only")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{100000000}));
  e->add_option("--batch", eval_flags->batch, "Images per forward pass")
      ->check(CLI::Range(std::int64_t{1}, std::int64_t{65536}))->capture_default_str();
  e->add_option("--seed", eval_flags->seed, "Seed of the noise and of PGD's random start")
      ->check(CLI::NonNegativeNumber)->capture_default_str();
  add_device_option(*e, eval_flags->device);
  e->callback([&action, eval_flags] { action = [eval_flags] { return run_eval(*eval_flags); }; });
}

}  // namespace ellipse::cli
