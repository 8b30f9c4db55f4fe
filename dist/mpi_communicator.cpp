// The MPI communicator (built when ELLIPSE_MPI finds an MPI). MPI reports errors by return code here
// (MPI_ERRORS_RETURN), which become ellipse::Error naming the call; a process that dies or exits without
// finalising makes the launcher end the whole job, so no rank waits forever for a dead one.
#include <mpi.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "autograd/grad_mode.hpp"
#include "autograd/ops.hpp"
#include "core/error.hpp"
#include "dist/collective_checks.hpp"
#include "dist/communicator.hpp"

namespace ellipse::dist {

namespace {

void check_mpi(int code, std::string_view call) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  fail("{}: {}", call, std::string_view(text, static_cast<std::size_t>(length)));
}

MPI_Datatype mpi_type(std::string_view collective, DType dtype) {
  switch (dtype) {
    case DType::f32: return MPI_FLOAT;
    case DType::f64: return MPI_DOUBLE;
    case DType::i64: return MPI_INT64_T;
  }
  fail("{}: unsupported dtype", collective);
}

// Runs `collective` on t's memory (t checked by the caller): t itself on the CPU, a host copy (copied back after)
// on another device.
template <class F>
void on_host(const Tensor& t, bool writes, F&& collective_call) {
  NoGradGuard no_grad;
  const Tensor host = t.device().is_cpu() ? t : t.detach().to(Device::cpu());
  collective_call(host);
  if (writes && !t.device().is_cpu()) t.detach().copy_(host.to(t.device()));
}

// Finalises MPI at exit if this library initialised it.
struct MpiSession {
  MpiSession() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owned = true;
    }
    check_mpi(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
  }
  ~MpiSession() {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned && !finalized) MPI_Finalize();
  }
  bool owned = false;
};

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator() {
    static MpiSession session;
    check_mpi(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check_mpi(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    MPI_Comm node = MPI_COMM_NULL;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    check_mpi(MPI_Comm_rank(node, &local_rank_), "MPI_Comm_rank");
    MPI_Comm_free(&node);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  std::string_view name() const override { return "mpi"; }

  void all_reduce(const Tensor& t, Reduction reduction) override {
    detail::check_all_reduce(t, reduction);
    on_host(t, true, [&](const Tensor& host) {
      check_mpi(MPI_Allreduce(MPI_IN_PLACE, host.raw_data(), count(host), mpi_type("all_reduce", host.dtype()),
                              MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce");
      if (reduction == Reduction::average) Tensor(host).copy_(div(host, static_cast<double>(size_)));
    });
  }

  void broadcast(const Tensor& t, int root) override {
    detail::check_broadcast(t, root, size_);
    on_host(t, true, [&](const Tensor& host) {
      check_mpi(MPI_Bcast(host.raw_data(), count(host), mpi_type("broadcast", host.dtype()), root, MPI_COMM_WORLD),
                "MPI_Bcast");
    });
  }

  Tensor all_gather(const Tensor& t) override {
    detail::check_contiguous("all_gather", t);
    Shape shape = t.shape();
    shape.insert(shape.begin(), size_);
    Tensor gathered;
    on_host(t, false, [&](const Tensor& host) {
      gathered = empty(shape, host.dtype(), Device::cpu());
      check_mpi(MPI_Allgather(host.raw_data(), count(host), mpi_type("all_gather", host.dtype()), gathered.raw_data(),
                              count(host), mpi_type("all_gather", host.dtype()), MPI_COMM_WORLD),
                "MPI_Allgather");
    });
    return gathered.to(t.device());
  }

  void barrier() override { check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }

  [[noreturn]] void abort(int code, std::string_view message) override {
    std::fprintf(stderr, "rank %d: %.*s\n", rank_, static_cast<int>(message.size()), message.data());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::exit(code);  // MPI_Abort does not return; this is for a broken MPI that does
  }

 private:
  static int count(const Tensor& t) {
    ELLIPSE_CHECK(t.numel() <= 0x7fffffff, "mpi: {} elements are more than one MPI call takes", t.numel());
    return static_cast<int>(t.numel());
  }
  int rank_ = 0, size_ = 1, local_rank_ = 0;
};

}  // namespace

bool mpi_built() { return true; }

std::unique_ptr<Communicator> make_mpi() { return std::make_unique<MpiCommunicator>(); }

}  // namespace ellipse::dist
