#include "backends/backend.hpp"

#include "backends/cpu/cpu_backend.hpp"
#include "core/error.hpp"

namespace ellipse {

Backend& backend_for(Device device) {
  switch (device.type) {
    case DeviceType::cpu:
      return cpu_backend();
    case DeviceType::cuda:
      break;
  }
  fail("device {}: this build of ellipse has no CUDA backend (the CUDA backend arrives with issue 5; "
       "configure with -DELLIPSE_CUDA=ON on a machine with nvcc and cuBLAS)",
       device.str());
}

}  // namespace ellipse
