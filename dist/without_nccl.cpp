// The library built without NCCL (ELLIPSE_NCCL=OFF, or no NCCL, CUDA backend or MPI found): tensors on a GPU go
// between ranks through MPI's host copies.
#include "core/error.hpp"
#include "dist/communicator.hpp"

namespace ellipse::dist {

bool nccl_built() { return false; }

std::unique_ptr<Communicator> make_nccl(Communicator&) {
  fail("dist::make_nccl: ellipse was built without NCCL (configure with -DELLIPSE_NCCL=ON, with the CUDA backend, "
       "MPI and NCCL installed)");
}

}  // namespace ellipse::dist
