#pragma once
// Training and evaluation of the ViT on Fashion-MNIST (what `ellipse train|eval vit` run), including
// evaluation under Gaussian noise and under FGSM and PGD attacks in pixel space.
#include <functional>
#include <optional>
#include <span>
#include <string>

#include "fashion_mnist.hpp"
#include "train_run.hpp"
#include "vit.hpp"

namespace ellipse {

struct ViTTrainOptions {
  std::string data_dir{kFashionMnistDir};
  std::string config = "vit-s";
  std::string attention = "standard";
  std::optional<nn::MetricMode> metric;  // default: sequence
  std::int64_t epochs = 10;               // the schedule's length
  std::optional<std::int64_t> batch;      // default: the preset's
  double lr = 1e-3;                       // peak, after warm-up
  double final_lr = 1e-5;                 // where the cosine ends
  double warmup_epochs = 1;
  double beta1 = 0.9, beta2 = 0.999, weight_decay = 0.05, clip = 1.0;
  bool augment = false;                   // random shifts of up to max_shift pixels and horizontal flips
  std::int64_t max_shift = 2;             // with augment; 0 leaves only the flips
  std::uint64_t seed = 0;
  std::int64_t limit_train = 0;           // > 0: train on the first N images only
  std::int64_t limit_test = 0;            // > 0: evaluate on the first N test images only
  std::string out_dir;
  bool resume = false;
  std::int64_t stop_after = 0;            // > 0: save and stop after this step, as an interruption would
  bool detect_anomaly = false;            // name the first op that produces a NaN or Inf (slow; see grad_mode.hpp)
  Device device = Device::cpu();          // where the model trains; checkpoints are the same on every device
  // Data-parallel training over these ranks (null: this process alone; the CLI passes dist::world(device)), as in
  // GPTTrainOptions: `batch` is the global batch, split evenly.
  dist::Communicator* communicator = nullptr;
};

struct ViTEvalRecord {
  std::int64_t step = 0, epoch = 0;
  double train_loss = 0, test_loss = 0, test_acc = 0, lr = 0, images_per_s = 0, elapsed_s = 0;
};

// Trains (or resumes), evaluating and checkpointing after every epoch (model.safetensors, config.json,
// train_state.safetensors, metrics.jsonl in out_dir). Returns the last evaluation. Checkpoints survive a crash
// or SIGKILL at any moment, and a NaN or Inf loss, gradient norm or test loss stops the run before it writes
// anything, as in train_gpt (RunCheckpoints in train_run.hpp). The device is checked, and the model initialised
// on the CPU, as there.
// With a communicator of several ranks, as train_gpt: the same options on every rank, checked; rank 0's start;
// each step's images split, the evaluation too; rank 0 alone writes and reports.
ViTEvalRecord train_vit(const ViTTrainOptions& options, const std::function<void(const TrainProgress&)>& on_step,
                        const std::function<void(const ViTEvalRecord&)>& on_eval);

// A training batch as train_vit draws it: the images at `indices` of data (images [N, S, S] f32 and labels [N] i64,
// on the CPU) as [n, S, S] on `device`, with their labels. With `augment`, each image is read mirrored left-right
// with probability 1/2 and shifted by dy rows and dx columns, each uniform in [-max_shift, max_shift] (out[y][x] =
// in[y + dy][x' + dx], x' = x or S - 1 - x; zeros enter at the edges), drawn from *augment image by image in batch
// order (dy, dx, then the mirror). Throws naming what is wrong on other shapes or dtypes, an index outside [0, N),
// or max_shift outside [0, S).
LabeledImages image_batch(const LabeledImages& data, std::span<const std::int64_t> indices, Generator* augment,
                          std::int64_t max_shift, Device device = Device::cpu());

// How test images are contaminated before classification. Pixels stay in [0, 1].
struct Perturbation {
  enum class Kind { none, gaussian, fgsm, pgd } kind = Kind::none;
  double size = 0;          // sigma (gaussian) or the L-infinity budget eps (fgsm, pgd)
  std::int64_t steps = 20;  // pgd
  double step_size = 0;     // pgd; 0 means size / 4
  std::uint64_t seed = 0;   // gaussian noise and pgd's random start

  // "clean", "gaussian:SIGMA", "fgsm:EPS", "pgd:EPS[,STEPS[,STEP]]" (what str() writes); EPS may be a fraction such
  // as 8/255.
  static Perturbation parse(std::string_view text);
  std::string str() const;
};

// `images` [B, S, S] (f32, pixels in [0, 1], on any device) perturbed as evaluate_vit perturbs a batch before
// classifying it, on their device: Gaussian noise of sigma `size`, or FGSM or PGD against `model` and `labels` [B]
// (i64) within an L-infinity distance of `size` from each image. Pixels stay in [0, 1]. `gen` draws the noise and
// PGD's random start (perturbation.seed is not used: evaluate_vit seeds `gen` with it). The attacks follow the
// model in its current mode (evaluate_vit puts it in eval mode) and leave its parameters' gradients and
// requires_grad flags as they were.
Tensor perturb_images(ViT& model, const Tensor& images, const Tensor& labels, const Perturbation& perturbation,
                      Generator& gen);

struct Accuracy {
  double accuracy = 0, loss = 0;
  std::int64_t count = 0;
};
// Accuracy and mean cross-entropy on the first `limit` items of `data` (all when 0), perturbed as asked, on the
// model's device. The attacks differentiate the loss with respect to the input pixels through the autograd.
Accuracy evaluate_vit(ViT& model, const LabeledImages& data, const Perturbation& perturbation = {},
                      std::int64_t limit = 0, std::int64_t batch = 500);
// Clean accuracy over several ranks: each evaluates every size-th batch and the counts are reduced, so every rank
// returns the whole evaluation.
Accuracy evaluate_vit(ViT& model, const LabeledImages& data, std::int64_t limit, std::int64_t batch,
                      dist::Communicator& comm);

}  // namespace ellipse
