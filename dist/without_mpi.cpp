// The library built without MPI (ELLIPSE_MPI=OFF, or no MPI found): multi-process runs are refused.
#include "core/error.hpp"
#include "dist/communicator.hpp"

namespace ellipse::dist {

bool mpi_built() { return false; }

std::unique_ptr<Communicator> make_mpi() {
  fail("dist::make_mpi: ellipse was built without MPI (configure with -DELLIPSE_MPI=ON and libopenmpi-dev installed)");
}

}  // namespace ellipse::dist
