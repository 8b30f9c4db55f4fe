#include "dist/communicator.hpp"

#include <cstdlib>
#include <cstdio>

#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "core/error.hpp"
#include "dist/collective_checks.hpp"

namespace ellipse::dist {

namespace detail {

void check_contiguous(std::string_view collective, const Tensor& t) {
  ELLIPSE_CHECK(t.defined() && t.is_contiguous(), "{}: expected a contiguous tensor, got {}", collective,
                t.defined() ? to_string(t.shape()) + " with strides " + to_string(t.strides()) : "undefined");
}

void check_all_reduce(const Tensor& t, Reduction reduction) {
  check_contiguous("all_reduce", t);
  ELLIPSE_CHECK(reduction == Reduction::sum || is_floating(t.dtype()),
                "all_reduce: averaging needs a floating dtype, got {}", dtype_name(t.dtype()));
}

void check_broadcast(const Tensor& t, int root, int size) {
  check_contiguous("broadcast", t);
  ELLIPSE_CHECK(root >= 0 && root < size, "broadcast: root {} is not a rank of {}", root, size);
}

}  // namespace detail

Device spread_over_gpus(Device device, int local_rank, int gpus) {
  ELLIPSE_CHECK(local_rank >= 0 && gpus >= 0, "spread_over_gpus: expected local_rank >= 0 and gpus >= 0, got {} and {}",
                local_rank, gpus);
  if (device != Device::cuda() || gpus == 0) return device;
  return Device::cuda(local_rank % gpus);
}

Device Communicator::rank_device(Device device) const {
  if (device != Device::cuda()) return device;  // a CPU run never starts the CUDA driver
  return spread_over_gpus(device, local_rank(), cuda_device_count());
}

namespace {

class SingleProcess final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  int local_rank() const override { return 0; }
  std::string_view name() const override { return "single process"; }
  void all_reduce(const Tensor& t, Reduction reduction) override { detail::check_all_reduce(t, reduction); }
  void broadcast(const Tensor& t, int root) override { detail::check_broadcast(t, root, 1); }
  Tensor all_gather(const Tensor& t) override {
    detail::check_contiguous("all_gather", t);
    return clone(unsqueeze(t.detach(), 0));
  }
  void barrier() override {}
  [[noreturn]] void abort(int code, std::string_view message) override {
    std::fprintf(stderr, "%.*s\n", static_cast<int>(message.size()), message.data());
    std::exit(code);
  }
};

}  // namespace

std::unique_ptr<Communicator> make_single_process() { return std::make_unique<SingleProcess>(); }

Communicator& single_process() {
  static SingleProcess alone;
  return alone;
}

bool launched_by_mpi() {
  // Open MPI's mpirun, PMIx (Open MPI 4+, Slurm) and PMI (MPICH, Slurm's srun --mpi=pmi2) name the rank.
  for (const char* variable : {"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(variable) != nullptr) return true;
  return false;
}

Communicator& world() {
  static const std::unique_ptr<Communicator> communicator = [] {
    if (!launched_by_mpi()) return make_single_process();
    ELLIPSE_CHECK(mpi_built(), "dist::world: this process was started by an MPI launcher, but ellipse was built "
                  "without MPI (configure with -DELLIPSE_MPI=ON and libopenmpi-dev installed)");
    return make_mpi();
  }();
  return *communicator;
}

Communicator& world(Device device) {
  if (device.is_cpu() || !launched_by_mpi() || !nccl_built()) return world();
  // Never destroyed, as the CUDA backends are not: at exit the CUDA runtime may be gone before static destructors run.
  static Communicator* const nccl = make_nccl(world()).release();
  return *nccl;
}

}  // namespace ellipse::dist
