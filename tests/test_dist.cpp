// The communicator and data-parallel helpers (dist/). ctest runs this program as one process (every collective
// the identity) and, where MPI is built, under mpirun with 2 and 4 ranks, where each case checks what the other
// ranks contributed. Every rank runs every case in the same order, as collectives need.
#include <doctest/doctest.h>

#include <memory>
#include <string>
#include <vector>

#include "dist/communicator.hpp"
#include "dist/data_parallel.hpp"
#include "helpers.hpp"

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

TEST_CASE("dist: broadcast_parameters gives every rank root's model; average_gradients the mean gradient") {
  Generator gen(static_cast<std::uint64_t>(100 + comm().rank()));  // a different start on every rank
  nn::MLP model(3, 4, gen);
  dist::broadcast_parameters(model, comm());
  Generator root_gen(100);
  nn::MLP root_model(3, 4, root_gen);
  for (const auto& [name, p] : model.named_parameters())
    CHECK(p.to_vector<double>() == root_model.parameter(name).to_vector<double>());

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
