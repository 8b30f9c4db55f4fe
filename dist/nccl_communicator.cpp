// The NCCL communicator (built when ELLIPSE_NCCL finds NCCL beside the CUDA backend and MPI): collectives between
// the GPUs of a run with one rank per GPU, made over a host communicator (MPI) that supplies the ranks, carries the
// rendezvous and takes the CPU tensors. NCCL's calls are queued on the CUDA backend's one stream of the rank's GPU,
// so they run after every kernel that wrote their tensors and before every kernel or host copy that reads them,
// without making the host wait. NCCL and CUDA errors become ellipse::Error naming the call.
#include <nccl.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "autograd/ops.hpp"
#include "backends/backend.hpp"
#include "backends/cuda/device_state.hpp"
#include "core/error.hpp"
#include "dist/collective_checks.hpp"
#include "dist/communicator.hpp"

#if NCCL_VERSION_CODE < NCCL_VERSION(2, 10, 0)
#error "ellipse needs NCCL 2.10 or newer (ncclAvg)"
#endif

namespace ellipse::dist {

namespace {

void check_nccl(ncclResult_t result, std::string_view call) {
  if (result != ncclSuccess) fail("nccl: {} failed: {}", call, ncclGetErrorString(result));
}

ncclDataType_t nccl_type(std::string_view collective, DType dtype) {
  switch (dtype) {
    case DType::f32: return ncclFloat32;
    case DType::f64: return ncclFloat64;
    case DType::i64: return ncclInt64;
  }
  fail("{}: unsupported dtype", collective);
}

// This rank's GPU, agreed on by every rank: cuda:(local rank mod the GPUs it sees) (spread_over_gpus), which is
// cuda:L where a rank sees all of its machine's GPUs, and cuda:0 where the launcher shows each rank its own one
// (CUDA_VISIBLE_DEVICES per rank, srun --gpus-per-task=1). If a rank has no GPU, or two ranks would share one
// (NCCL refuses that), every rank throws, so that none waits for the others in the rendezvous.
CudaBackend& take_gpu(Communicator& host) {
  const int local = host.local_rank();
  const Device device = spread_over_gpus(Device::cuda(), local, cuda_device_count());
  CudaBackend* gpu = nullptr;
  std::string problem;
  std::vector<std::int64_t> uuid(2, 0);  // the GPU's 16-byte UUID as two words: ranks sharing a GPU show alike
  try {
    gpu = &cuda_backend(device.index);
    cudaDeviceProp properties{};
    cuda::check(cudaGetDeviceProperties(&properties, device.index), "cudaGetDeviceProperties");
    static_assert(sizeof(properties.uuid.bytes) == 2 * sizeof(std::int64_t));
    std::memcpy(uuid.data(), properties.uuid.bytes, sizeof(properties.uuid.bytes));
  } catch (const Error& e) {
    problem = e.what();
  }
  const Tensor failures = from_vector(std::vector<std::int64_t>{problem.empty() ? 0 : 1}, {1});
  host.all_reduce(failures, Reduction::sum);
  ELLIPSE_CHECK(problem.empty(), "nccl: rank {} (local rank {}) has no GPU of its own, {} (one GPU per rank): {}",
                host.rank(), local, device.str(), problem);
  const std::int64_t without = failures.to_vector<std::int64_t>()[0];
  ELLIPSE_CHECK(without == 0, "nccl: {} of the {} ranks have no GPU of their own (one GPU per rank, by local rank; see "
                "their errors); this is rank {} on {}", without, host.size(), host.rank(), device.str());
  const std::vector<std::int64_t> uuids = host.all_gather(from_vector(uuid, {2})).to_vector<std::int64_t>();
  for (int a = 0; a < host.size(); ++a)
    for (int b = a + 1; b < host.size(); ++b)
      ELLIPSE_CHECK(uuids[2 * a] != uuids[2 * b] || uuids[2 * a + 1] != uuids[2 * b + 1], "nccl: ranks {} and {} would "
                    "share one GPU (this is rank {} on {}); NCCL needs a GPU per rank: start at most as many ranks on "
                    "a machine as it has GPUs", a, b, host.rank(), device.str());
  return *gpu;
}

class NcclCommunicator final : public Communicator {
 public:
  explicit NcclCommunicator(Communicator& host) : host_(host), gpu_(take_gpu(host)) {
    // The unique id travels as 64-bit words through the host's broadcast, from rank 0 to every rank.
    ncclUniqueId id{};
    static_assert(sizeof(id) % sizeof(std::int64_t) == 0);
    std::vector<std::int64_t> words(sizeof(id) / sizeof(std::int64_t));
    if (host_.rank() == 0) {
      check_nccl(ncclGetUniqueId(&id), "ncclGetUniqueId");
      std::memcpy(words.data(), &id, sizeof(id));
    }
    const Tensor shared = from_vector(words, {static_cast<std::int64_t>(words.size())});
    host_.broadcast(shared, 0);
    words = shared.to_vector<std::int64_t>();
    std::memcpy(&id, words.data(), sizeof(id));
    gpu_.state().activate();  // NCCL binds the communicator to the current device
    check_nccl(ncclCommInitRank(&comm_, host_.size(), id, host_.rank()), "ncclCommInitRank");
  }
  ~NcclCommunicator() override {
    if (comm_) ncclCommDestroy(comm_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override { return host_.rank(); }
  int size() const override { return host_.size(); }
  int local_rank() const override { return host_.local_rank(); }
  std::string_view name() const override { return "nccl"; }
  Device rank_device(Device device) const override {
    if (device.is_cpu()) return device;
    ELLIPSE_CHECK(device.index == 0 || device == gpu_.device(), "nccl: every rank computes on a GPU of its own, by "
                  "local rank (rank {} on {}); {} was asked for: ask for cuda", rank(), gpu_.device().str(),
                  device.str());
    return gpu_.device();
  }

  void all_reduce(const Tensor& t, Reduction reduction) override {
    detail::check_all_reduce(t, reduction);
    if (t.device().is_cpu()) {
      host_.all_reduce(t, reduction);
      return;
    }
    const cudaStream_t queue = stream("all_reduce", t);
    check_nccl(ncclAllReduce(t.raw_data(), t.raw_data(), count(t), nccl_type("all_reduce", t.dtype()),
                             reduction == Reduction::sum ? ncclSum : ncclAvg, comm_, queue),
               "ncclAllReduce");
  }

  void broadcast(const Tensor& t, int root) override {
    detail::check_broadcast(t, root, size());
    if (t.device().is_cpu()) {
      host_.broadcast(t, root);
      return;
    }
    const cudaStream_t queue = stream("broadcast", t);
    check_nccl(ncclBroadcast(t.raw_data(), t.raw_data(), count(t), nccl_type("broadcast", t.dtype()), root, comm_,
                             queue),
               "ncclBroadcast");
  }

  Tensor all_gather(const Tensor& t) override {
    detail::check_contiguous("all_gather", t);
    if (t.device().is_cpu()) return host_.all_gather(t);
    const cudaStream_t queue = stream("all_gather", t);
    Shape shape = t.shape();
    shape.insert(shape.begin(), size());
    const Tensor gathered = empty(shape, t.dtype(), t.device());
    check_nccl(ncclAllGather(t.raw_data(), gathered.raw_data(), count(t), nccl_type("all_gather", t.dtype()), comm_,
                             queue),
               "ncclAllGather");
    return gathered;
  }

  void barrier() override { host_.barrier(); }

  [[noreturn]] void abort(int code, std::string_view message) override {
    ncclCommAbort(comm_);  // frees this rank's GPU from collectives that will never complete
    comm_ = nullptr;
    host_.abort(code, message);
    std::exit(code);  // an override of abort need not be [[noreturn]], so the compiler cannot know that host_'s is
  }

 private:
  static std::size_t count(const Tensor& t) { return static_cast<std::size_t>(t.numel()); }
  // The stream of this rank's GPU, made current, for a collective on t (which must live on that GPU).
  cudaStream_t stream(std::string_view collective, const Tensor& t) {
    ELLIPSE_CHECK(t.device() == gpu_.device(), "{}: the tensor is on {}, but rank {}'s NCCL communicator works on {} "
                  "(one GPU per rank, by local rank; CPU tensors go through {})", collective, t.device().str(), rank(),
                  gpu_.device().str(), host_.name());
    gpu_.state().activate();
    return gpu_.state().stream;
  }

  Communicator& host_;
  CudaBackend& gpu_;
  ncclComm_t comm_ = nullptr;
};

}  // namespace

bool nccl_built() { return true; }

std::unique_ptr<Communicator> make_nccl(Communicator& host) { return std::make_unique<NcclCommunicator>(host); }

}  // namespace ellipse::dist
