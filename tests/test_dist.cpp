// The communicator and data-parallel helpers (dist/). ctest runs this program as one process (every collective
// the identity) and, where MPI is built, under mpirun with 2 and 4 ranks, where each case checks what the other
// ranks contributed. Every rank runs every case in the same order, as collectives need. The NCCL cases run where
// NCCL is built and every rank has a GPU of its own (one process: one GPU; under mpirun -n N: N GPUs), and report
// themselves skipped, with the reason, elsewhere.
#include <doctest/doctest.h>

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "dist/communicator.hpp"
#include "dist/data_parallel.hpp"
#include "fashion_fixture.hpp"
#include "helpers.hpp"
#include "study/study.hpp"

using namespace ellipse;

namespace {

dist::Communicator& comm() { return dist::world(); }

// 0 + 1 + ... + (size - 1)
double rank_sum() { return comm().size() * (comm().size() - 1) / 2.0; }

}  // namespace

TEST_CASE("dist: world is MPI exactly when an MPI launcher started the process") {
  MESSAGE("communicator: ", std::string(comm().name()), ", rank ", comm().rank(), " of ", comm().size());
  CHECK(std::string(comm().name()) == (dist::launched_by_mpi() ? "mpi" : "single process"));
  CHECK(comm().rank() >= 0);
  CHECK(comm().rank() < comm().size());
  CHECK(comm().local_rank() >= 0);
  CHECK(comm().local_rank() <= comm().rank());  // one machine here: local rank = rank
  comm().barrier();
}

TEST_CASE("dist: asked for cuda, the ranks of a machine spread over its GPUs; other devices stay as asked") {
  // 4 ranks on a 2-GPU machine: two per GPU, in local-rank order.
  CHECK(dist::spread_over_gpus(Device::cuda(), 0, 2) == Device::cuda(0));
  CHECK(dist::spread_over_gpus(Device::cuda(), 1, 2) == Device::cuda(1));
  CHECK(dist::spread_over_gpus(Device::cuda(), 2, 2) == Device::cuda(0));
  CHECK(dist::spread_over_gpus(Device::cuda(), 3, 2) == Device::cuda(1));
  CHECK(dist::spread_over_gpus(Device::cuda(), 5, 8) == Device::cuda(5));
  // A pinned GPU, the CPU, and no GPU at all (backend_for then says why) are left alone.
  CHECK(dist::spread_over_gpus(Device::cuda(1), 3, 2) == Device::cuda(1));
  CHECK(dist::spread_over_gpus(Device::cpu(), 3, 2) == Device::cpu());
  CHECK(dist::spread_over_gpus(Device::cuda(), 3, 0) == Device::cuda());
  CHECK_THROWS_WITH(dist::spread_over_gpus(Device::cuda(), -1, 2), doctest::Contains("local_rank >= 0"));
  CHECK_THROWS_WITH(dist::spread_over_gpus(Device::cuda(), 0, -1), doctest::Contains("got 0 and -1"));
  // This rank, on this machine.
  CHECK(comm().rank_device(Device::cpu()) == Device::cpu());
  const int gpus = cuda_device_count();
  CHECK(comm().rank_device(Device::cuda()) == (gpus == 0 ? Device::cuda() : Device::cuda(comm().local_rank() % gpus)));
}

TEST_CASE("dist: all_reduce sums and averages in place; broadcast and all_gather") {
  const auto r = static_cast<double>(comm().rank());
  for (DType dtype : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dtype));
    Tensor t = full({2, 3}, r + 1, dtype);
    comm().all_reduce(t, dist::Reduction::sum);
    CHECK(t.to_vector<double>() == std::vector<double>(6, rank_sum() + comm().size()));
    Tensor a = full({5}, r, dtype);
    comm().all_reduce(a, dist::Reduction::average);
    CHECK(a.to_vector<double>() == std::vector<double>(5, rank_sum() / comm().size()));
  }
  Tensor ids = full({4}, comm().rank(), DType::i64);
  comm().all_reduce(ids, dist::Reduction::sum);
  CHECK(ids.to_vector<std::int64_t>() == std::vector<std::int64_t>(4, static_cast<std::int64_t>(rank_sum())));

  const int root = comm().size() - 1;
  Tensor b = full({3}, r * 10);
  comm().broadcast(b, root);
  CHECK(b.to_vector<double>() == std::vector<double>(3, root * 10.0));

  const Tensor gathered = comm().all_gather(full({2}, r));
  REQUIRE(gathered.shape() == Shape{comm().size(), 2});
  for (int k = 0; k < comm().size(); ++k) CHECK(select(gathered, 0, k).to_vector<double>() == std::vector<double>{1.0 * k, 1.0 * k});

  CHECK_THROWS_WITH(comm().all_reduce(full({2, 3}, 1.0).transpose(0, 1), dist::Reduction::sum),
                    doctest::Contains("all_reduce: expected a contiguous tensor"));
  CHECK_THROWS_WITH(comm().all_reduce(full({2}, 1, DType::i64), dist::Reduction::average),
                    doctest::Contains("averaging needs a floating dtype, got i64"));
  CHECK_THROWS_WITH(comm().broadcast(full({2}, 1.0), comm().size()), doctest::Contains("is not a rank"));
}

// A module whose one parameter is a transposed view, as a tied or reshaped weight can be.
struct TransposedWeight : nn::Module {
  explicit TransposedWeight(Generator& gen) : w(register_parameter("w", randn({3, 2}, gen).transpose(0, 1))) {}
  Tensor w;
};

TEST_CASE("dist: broadcast_parameters gives every rank root's model; average_gradients the mean gradient") {
  Generator gen(static_cast<std::uint64_t>(100 + comm().rank()));  // a different start on every rank
  nn::MLP model(3, 4, gen);
  dist::broadcast_parameters(model, comm());
  Generator root_gen(100);
  nn::MLP root_model(3, 4, root_gen);
  for (const auto& [name, p] : model.named_parameters())
    CHECK(p.to_vector<double>() == root_model.parameter(name).to_vector<double>());
  // A parameter that is a strided view (here a transposed one) goes through a dense copy and back.
  Generator strided_gen(static_cast<std::uint64_t>(200 + comm().rank()));
  TransposedWeight strided(strided_gen);
  REQUIRE_FALSE(strided.w.is_contiguous());
  dist::broadcast_parameters(strided, comm());
  Generator root_strided_gen(200);
  CHECK(strided.w.to_vector<double>() == TransposedWeight(root_strided_gen).w.to_vector<double>());

  // Rank r's gradient is r + 1 everywhere; one parameter has none on odd ranks (counted as zero there).
  const auto params = model.parameters();
  for (std::size_t i = 0; i < params.size(); ++i) {
    if (i == 0 && comm().rank() % 2 == 1) continue;
    params[i].impl()->grad = full(params[i].shape(), comm().rank() + 1.0).impl();
  }
  dist::average_gradients(params, comm());
  double odd_ranks = 0;
  for (int k = 1; k < comm().size(); k += 2) odd_ranks += k + 1;
  const double mean_all = (rank_sum() + comm().size()) / comm().size();
  CHECK(params[0].grad().to_vector<double>() ==
        std::vector<double>(static_cast<std::size_t>(params[0].numel()), mean_all - odd_ranks / comm().size()));
  CHECK(params[1].grad().to_vector<double>() == std::vector<double>(static_cast<std::size_t>(params[1].numel()), mean_all));
}

TEST_CASE("dist: check_same_on_all_ranks passes on agreement and names the ranks that disagree") {
  nn::Linear layer(2, 3);
  CHECK_NOTHROW(dist::check_same_on_all_ranks(comm(), "the model", dist::parameter_signature(layer)));
  CHECK(dist::parameter_signature(layer) == "weight [3, 2] f32; bias [3] f32; ");
  if (comm().size() == 1) return;
  // Every rank learns of the disagreement, so none of them goes on to wait in a collective alone.
  const std::string mine = comm().rank() == comm().size() - 1 ? "batch=8" : "batch=16";
  const std::string expected =
      "the configuration differs across ranks: rank 0 and rank " + std::to_string(comm().size() - 1) + " disagree";
  CHECK_THROWS_WITH(dist::check_same_on_all_ranks(comm(), "the configuration", mine),
                    doctest::Contains(expected.c_str()));
}

namespace {

// One directory path for every rank: rank 0's process id, broadcast.
std::filesystem::path shared_scratch_dir() {
  Tensor id = full({1}, static_cast<double>(::getpid()), DType::i64);
  comm().broadcast(id, 0);
  return std::filesystem::temp_directory_path() /
         ("ellipse_test_dist_" + std::to_string(id.to_vector<std::int64_t>()[0]));
}

// A small text in dir (made afresh by rank 0) that every rank sees once this returns: `repeats` copies of a line.
std::string write_shared_text(const std::filesystem::path& dir, int repeats) {
  const std::string text = (dir / "text.txt").string();
  if (comm().rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::ofstream out(text);
    for (int i = 0; i < repeats; ++i) out << "the cat sat on the mat; a dog sat on a log. ";
  }
  comm().barrier();
  return text;
}

// 12 steps of an elliptical gpt-tiny at batch 8 (which splits over 1, 2 and 4 ranks), evaluated every 6.
GPTTrainOptions tiny_gpt_options(const std::string& text) {
  GPTTrainOptions o;
  o.text_path = text;
  o.config = "gpt-tiny";
  o.attention = "elliptical";
  o.batch = 8;
  o.steps = 12;
  o.eval_every = 6;
  o.warmup = 2;
  o.lr = 3e-3;
  return o;
}

std::vector<double> flat_values(const std::vector<Tensor>& tensors) {
  std::vector<double> values;
  for (const Tensor& t : tensors)
    for (double v : t.to_vector<double>()) values.push_back(v);
  return values;
}

// The train_loss of each line of a metrics.jsonl.
std::vector<double> train_losses(const std::string& path) {
  std::vector<double> losses;
  const std::string text = io::read_file(path, 1 << 20);
  for (std::size_t at = text.find("\"train_loss\":"); at != std::string::npos; at = text.find("\"train_loss\":", at + 1))
    losses.push_back(std::strtod(text.c_str() + at + 13, nullptr));
  return losses;
}

double worst_relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]) / std::abs(b[i]));
  return worst;
}

// ||a - b|| / ||b||. Elementwise, a few parameters differ by more than rounding: the key biases, whose gradient
// is zero but for rounding (a key bias adds the same amount to every score of a row), so AdamW's normalised step
// turns each run's rounding noise into steps of up to lr.
double norm_relative_difference(const std::vector<double>& a, const std::vector<double>& b) {
  REQUIRE(a.size() == b.size());
  double difference = 0, norm = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    difference += (a[i] - b[i]) * (a[i] - b[i]);
    norm += b[i] * b[i];
  }
  return std::sqrt(difference / norm);
}

}  // namespace

TEST_CASE("dist: train_gpt over the ranks gives one process's losses and parameters on the global batch") {
  const std::filesystem::path dir = shared_scratch_dir();
  const std::string text = write_shared_text(dir, 60);
  GPTTrainOptions o = tiny_gpt_options(text);
  o.out_dir = (dir / "parallel").string();
  o.communicator = &comm();
  int on_step_calls = 0, on_eval_calls = 0;
  TrainProgress last;
  train_gpt(
      o,
      [&](const TrainProgress& p) {
        ++on_step_calls;
        last = p;
      },
      [&](const EvalRecord&) { ++on_eval_calls; });
  CHECK(on_step_calls == (comm().rank() == 0 ? 12 : 0));  // progress and metrics from rank 0 only
  CHECK(on_eval_calls == (comm().rank() == 0 ? 2 : 0));
  if (comm().rank() == 0) {  // the time in the all-reduces: some on several ranks, none on one
    CHECK(last.communication_s <= last.elapsed_s);
    CHECK((comm().size() > 1 ? last.communication_s > 0 : last.communication_s == 0));
  }

  if (comm().rank() == 0) {  // the same run in this process alone
    GPTTrainOptions single = o;
    single.out_dir = (dir / "single").string();
    single.communicator = nullptr;
    train_gpt(single, {}, {});
    for (const char* file : {"config.json", "metrics.jsonl", "model.safetensors", "train_state.safetensors"})
      CHECK(std::filesystem::exists(std::filesystem::path(o.out_dir) / file));
    const auto parallel_losses = train_losses(o.out_dir + "/metrics.jsonl");
    CHECK(parallel_losses.size() == 2);
    CHECK(worst_relative_difference(parallel_losses, train_losses(single.out_dir + "/metrics.jsonl")) < 1e-6);
    CHECK(norm_relative_difference(flat_values(load_gpt(o.out_dir).model->parameters()),
                                   flat_values(load_gpt(single.out_dir).model->parameters())) < 1e-5);
  }
  comm().barrier();
  if (comm().rank() == 0) std::filesystem::remove_all(dir);
}

TEST_CASE("dist: run_train_loop over the ranks leaves every rank with the same parameters, bit for bit") {
  const std::filesystem::path dir = shared_scratch_dir();
  Generator init(0);
  nn::Sequential model({std::make_shared<nn::Linear>(3, 8, true, init),
                        std::make_shared<nn::Lambda>([](const Tensor& x) { return tanh(x); }),
                        std::make_shared<nn::Linear>(8, 1, true, init)});
  nn::AdamW optimizer(model.parameters(), {.lr = 1e-2});
  RunCheckpoints run((dir / "loop").string(), "toy", "");
  if (comm().rank() == 0) run.start("{}\n");
  Generator data(static_cast<std::uint64_t>(7 + comm().rank()));  // each rank's own data
  TrainLoop loop;
  loop.steps = loop.end = 10;
  loop.communicator = &comm();
  loop.learning_rate = [](std::int64_t) { return 1e-2; };
  loop.loss = [&](std::int64_t) {
    const Tensor x = uniform({16, 3}, -1.0, 1.0, data);
    return mean(pow(model.forward(x) - sum(x, {1}, true), 2.0));
  };
  loop.evaluate_after = [](std::int64_t) { return false; };
  loop.evaluate = [](const TrainProgress& at, double loss) {
    return "{\"step\": " + std::to_string(at.step) + ", \"train_loss\": " + std::to_string(loss) + "}\n";
  };
  loop.state = [](std::int64_t) { return TrainState{}; };
  run_train_loop(loop, model, optimizer, run);
  std::string bits;
  for (const Tensor& p : model.parameters()) {
    const auto values = p.to_vector<float>();
    bits.append(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
  }
  CHECK_NOTHROW(dist::check_same_on_all_ranks(comm(), "the trained parameters", bits));
  comm().barrier();
  if (comm().rank() == 0) std::filesystem::remove_all(dir);
}

TEST_CASE("dist: train_vit over the ranks gives one process's losses and accuracy on the global batch") {
  const std::filesystem::path dir = shared_scratch_dir();
  if (comm().rank() == 0) {
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    testing::write_dataset((dir / "data").string(), 96, 40);
  }
  comm().barrier();
  ViTTrainOptions o;
  o.data_dir = (dir / "data").string();
  o.config = "vit-xs";
  o.attention = "elliptical";
  o.batch = 16;  // splits over 1, 2 and 4 ranks
  o.epochs = 2;
  o.augment = true;  // each image's shift drawn in batch order, whichever rank trains on it
  o.out_dir = (dir / "parallel").string();
  o.communicator = &comm();
  const ViTEvalRecord parallel = train_vit(o, {}, {});
  if (comm().rank() == 0) {
    ViTTrainOptions single = o;
    single.out_dir = (dir / "single").string();
    single.communicator = nullptr;
    const ViTEvalRecord alone = train_vit(single, {}, {});
    CHECK(parallel.step == alone.step);
    CHECK(parallel.train_loss == doctest::Approx(alone.train_loss).epsilon(1e-6));
    CHECK(parallel.test_loss == doctest::Approx(alone.test_loss).epsilon(1e-5));
    CHECK(parallel.test_acc == alone.test_acc);
    CHECK(worst_relative_difference(train_losses(o.out_dir + "/metrics.jsonl"),
                                    train_losses(single.out_dir + "/metrics.jsonl")) < 1e-6);
  }
  comm().barrier();
  if (comm().rank() == 0) std::filesystem::remove_all(dir);
}

namespace {

// NCCL over comm()'s ranks, or null after reporting why not. Every rank gets the same answer: make_nccl throws on
// all of them when one has no GPU of its own.
std::unique_ptr<dist::Communicator> nccl_or_skip() {
  if (!dist::nccl_built()) {
    MESSAGE("SKIPPED NCCL cases: ellipse was built without NCCL (ELLIPSE_NCCL)");
    return nullptr;
  }
  std::unique_ptr<dist::Communicator> nccl;
  const std::string reason = testing::error_message([&] { nccl = dist::make_nccl(comm()); });
  if (!nccl) MESSAGE("SKIPPED NCCL cases: ", reason);
  return nccl;
}

}  // namespace

TEST_CASE("dist: NCCL sums, averages, broadcasts and gathers CUDA tensors, one GPU per rank") {
  const auto nccl = nccl_or_skip();
  if (!nccl) return;
  CHECK(std::string(nccl->name()) == "nccl");
  CHECK(nccl->rank() == comm().rank());
  CHECK(nccl->size() == comm().size());
  const Device gpu = nccl->rank_device(Device::cuda());
  CHECK(gpu == dist::spread_over_gpus(Device::cuda(), comm().local_rank(), cuda_device_count()));
  CHECK(nccl->rank_device(Device::cpu()) == Device::cpu());
  CHECK_THROWS_WITH(nccl->rank_device(Device::cuda(comm().local_rank() + 1)), doctest::Contains("ask for cuda"));

  const auto r = static_cast<double>(comm().rank());
  for (DType dtype : {DType::f32, DType::f64}) {
    CAPTURE(dtype_name(dtype));
    Tensor t = full({2, 3}, r + 1, dtype, gpu);
    nccl->all_reduce(t, dist::Reduction::sum);
    CHECK(t.device() == gpu);
    CHECK(t.to_vector<double>() == std::vector<double>(6, rank_sum() + comm().size()));
    Tensor a = full({5}, r, dtype, gpu);
    nccl->all_reduce(a, dist::Reduction::average);
    for (double v : a.to_vector<double>())  // ncclAvg rounds its own way
      CHECK(v == doctest::Approx(rank_sum() / comm().size()));
  }
  Tensor ids = full({4}, comm().rank(), DType::i64, gpu);
  nccl->all_reduce(ids, dist::Reduction::sum);
  CHECK(ids.to_vector<std::int64_t>() == std::vector<std::int64_t>(4, static_cast<std::int64_t>(rank_sum())));

  const int root = comm().size() - 1;
  Tensor b = full({3}, r * 10, DType::f32, gpu);
  nccl->broadcast(b, root);
  CHECK(b.to_vector<double>() == std::vector<double>(3, root * 10.0));

  for (DType dtype : {DType::f32, DType::i64}) {
    CAPTURE(dtype_name(dtype));
    const Tensor gathered = nccl->all_gather(full({2}, r, dtype, gpu));
    REQUIRE(gathered.shape() == Shape{comm().size(), 2});
    CHECK(gathered.device() == gpu);
    for (int k = 0; k < comm().size(); ++k)
      CHECK(select(gathered, 0, k).to_vector<double>() == std::vector<double>{1.0 * k, 1.0 * k});
  }

  // CPU tensors go through the MPI communicator underneath (the trainers' losses and fingerprints).
  Tensor host = full({2}, r);
  nccl->all_reduce(host, dist::Reduction::sum);
  CHECK(host.to_vector<double>() == std::vector<double>(2, rank_sum()));

  CHECK_THROWS_WITH(nccl->all_reduce(full({2, 3}, 1.0, DType::f32, gpu).transpose(0, 1), dist::Reduction::sum),
                    doctest::Contains("all_reduce: expected a contiguous tensor"));
  CHECK_THROWS_WITH(nccl->all_reduce(full({2}, 1, DType::i64, gpu), dist::Reduction::average),
                    doctest::Contains("averaging needs a floating dtype, got i64"));
  CHECK_THROWS_WITH(nccl->broadcast(full({2}, 1.0, DType::f32, gpu), comm().size()),
                    doctest::Contains("is not a rank"));
  nccl->barrier();
}

TEST_CASE("dist: train_gpt through NCCL gives one GPU's losses: the same bits on one rank, to rounding on several") {
  const auto nccl = nccl_or_skip();
  if (!nccl) return;
  const std::filesystem::path dir = shared_scratch_dir();
  const std::string text = write_shared_text(dir, 60);
  GPTTrainOptions o = tiny_gpt_options(text);
  o.out_dir = (dir / "nccl").string();
  o.device = nccl->rank_device(Device::cuda());
  o.communicator = nccl.get();
  train_gpt(o, {}, {});
  if (comm().rank() == 0) {  // the same run on this rank's GPU alone
    GPTTrainOptions single = o;
    single.out_dir = (dir / "single").string();
    single.communicator = nullptr;
    train_gpt(single, {}, {});
    const auto losses = train_losses(o.out_dir + "/metrics.jsonl");
    const auto alone = train_losses(single.out_dir + "/metrics.jsonl");
    CHECK(losses.size() == 2);
    if (comm().size() == 1) {
      CHECK(losses == alone);
      CHECK(flat_values(load_gpt(o.out_dir).model->parameters()) ==
            flat_values(load_gpt(single.out_dir).model->parameters()));
    } else {
      CHECK(worst_relative_difference(losses, alone) < 1e-5);
    }
  }
  comm().barrier();
  if (comm().rank() == 0) std::filesystem::remove_all(dir);
}

TEST_CASE("dist: run_gpt_study deals its runs out over the ranks; rank 0 writes one process's summary") {
  const std::filesystem::path dir = shared_scratch_dir();
  const std::string text = write_shared_text(dir, 90);
  study::StudyGptOptions o;
  o.preset = "smoke";
  o.attention = {"standard", "elliptical"};
  o.seeds = 2;
  o.text_path = text;
  o.out_dir = (dir / "parallel").string();
  o.communicator = &comm();
  std::vector<std::string> trained;
  study::StudyCallbacks callbacks;
  callbacks.on_train_step = [&](const std::string& run, const TrainProgress& p) {
    if (p.step == 1) trained.push_back(run);
  };
  const study::StudyResult result = study::run_gpt_study(o, callbacks);
  // Runs in seed-major order (standard-seed0, elliptical-seed0, standard-seed1, elliptical-seed1), rank r taking
  // every size-th from the r-th: each trained once, by one rank.
  const std::vector<std::string> runs{"standard-seed0", "elliptical-seed0", "standard-seed1", "elliptical-seed1"};
  std::vector<std::string> mine;
  for (std::size_t i = static_cast<std::size_t>(comm().rank()); i < runs.size(); i += static_cast<std::size_t>(comm().size()))
    mine.push_back(runs[i]);
  CHECK(trained == mine);
  CHECK(result.summarized);  // on every rank, once rank 0 has written it
  CHECK(std::filesystem::exists(result.summary_path));

  if (comm().rank() == 0) {  // the same study in this process alone
    study::StudyGptOptions single = o;
    single.out_dir = (dir / "single").string();
    single.communicator = nullptr;
    nlohmann::json parallel = nlohmann::json::parse(io::read_file(result.summary_path, 1 << 20));
    nlohmann::json alone = nlohmann::json::parse(io::read_file(study::run_gpt_study(single).summary_path, 1 << 20));
    for (auto* s : {&parallel, &alone})
      for (const auto& variant : o.attention) (*s)[variant].erase("train_seconds");
    CHECK(parallel == alone);
  }
  comm().barrier();
  if (comm().rank() == 0) std::filesystem::remove_all(dir);
}
