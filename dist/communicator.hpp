#pragma once
// Collectives between the processes of a multi-process run, behind one interface: a single process (every
// collective is the identity; the default), MPI (launched by mpirun or srun; dist/mpi_communicator.cpp, built when
// ELLIPSE_MPI finds an MPI) and NCCL between GPUs (dist/nccl_communicator.cpp, built when ELLIPSE_NCCL finds NCCL).
// Every rank calls the same collectives in the same order with tensors of the same shape and dtype; tensors are
// reduced in place. MPI moves tensors on a GPU through host memory; NCCL moves them from GPU to GPU, one GPU per
// rank, and hands CPU tensors to the MPI communicator it was made over.
#include <memory>
#include <string_view>

#include "../core/tensor.hpp"

namespace ellipse::dist {

enum class Reduction { sum, average };

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // The rank among the processes on this machine: which GPU a rank takes.
  virtual int local_rank() const = 0;
  virtual std::string_view name() const = 0;  // "single process", "mpi" or "nccl"
  // The device this rank computes on when a run asks for `device`. Asking for cuda (cuda:0) spreads the ranks of a
  // machine over its GPUs, cuda:(local_rank() mod the GPU count), rather than putting them all on cuda:0
  // (spread_over_gpus); another device is taken as asked. NCCL is stricter: no two ranks share a GPU, and asking
  // for another index than the rank's own throws.
  virtual Device rank_device(Device device) const;

  // t (contiguous, f32, f64 or i64; average needs a floating dtype) becomes the sum or mean over the ranks.
  virtual void all_reduce(const Tensor& t, Reduction reduction) = 0;
  // t (contiguous) becomes root's t on every rank.
  virtual void broadcast(const Tensor& t, int root) = 0;
  // [size, ...t's shape] on every rank, rank r's t at index r (t contiguous).
  virtual Tensor all_gather(const Tensor& t) = 0;
  virtual void barrier() = 0;
  // Ends every process of the run with `code`, after printing `message` with this rank: what a rank that
  // cannot go on calls, so that the others do not wait for it forever.
  [[noreturn]] virtual void abort(int code, std::string_view message) = 0;
};

// What rank_device does on a machine with `gpus` CUDA devices: cuda:0 becomes cuda:(local_rank mod gpus), any
// other device (or no GPU) stays as it is. Several ranks may share a GPU when there are more ranks than GPUs.
Device spread_over_gpus(Device device, int local_rank, int gpus);

std::unique_ptr<Communicator> make_single_process();
// One shared single-process communicator: what a function given no communicator uses.
Communicator& single_process();
// Initialises MPI (MPI_Init_thread, funneled: collectives come from the thread that calls them) on the first
// call and finalises it at exit. Throws when the library was built without MPI.
std::unique_ptr<Communicator> make_mpi();
// Whether this library was built with MPI (ELLIPSE_MPI), and whether this process was started by an MPI
// launcher (mpirun, mpiexec or srun set the process's rank in its environment).
bool mpi_built();
bool launched_by_mpi();
// NCCL over the ranks of `host` (in practice world()'s MPI ranks), one GPU per rank: the rank of local rank L takes
// cuda:(L mod the GPUs it sees), which is cuda:L when every rank sees all of its machine's GPUs and cuda:0 when each
// sees only its own. Every rank calls it at once: if any rank has no GPU, or two ranks would share one, every rank
// throws, naming the ranks. Rank 0 then makes NCCL's unique id and broadcasts it through `host`, and each rank joins.
// CUDA tensors, which must be on the rank's GPU, go through NCCL on the CUDA backend's stream of that GPU, ordered
// after every kernel queued before (the collective returns before it completes, as those kernels do); CPU tensors
// go through `host`, which must outlive the result. Throws when the library was built without NCCL.
std::unique_ptr<Communicator> make_nccl(Communicator& host);
// Whether this library was built with NCCL (ELLIPSE_NCCL).
bool nccl_built();
// This process's communicator, made on the first call: MPI when launched by an MPI launcher (an error if the
// library was built without MPI, rather than N processes that each train alone), else a single process.
Communicator& world();
// The communicator for a run on `device`: world(), except for a CUDA device under an MPI launcher in a build with
// NCCL, which gets NCCL over world()'s ranks (made on the first such call); its rank_device(device) is the GPU that
// the run should use.
Communicator& world(Device device);

}  // namespace ellipse::dist
