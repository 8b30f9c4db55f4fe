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
  fail("device {}: this build of ellipse has no CUDA backend: its kernels are not written yet (issue 5); "
       "only the cpu device is available",
       device.str());
}

}  // namespace ellipse
