#pragma once
#include <cstddef>
#include <functional>
#include <memory>

#include "device.hpp"

namespace ellipse {

// A block of memory on one device. Tensors share it through std::shared_ptr; the backend that allocated it
// supplies the deleter.
class Storage {
 public:
  using Deleter = std::function<void(void*)>;
  Storage(void* data, std::size_t bytes, Device device, Deleter deleter)
      : data_(data), bytes_(bytes), device_(device), deleter_(std::move(deleter)) {}
  ~Storage() {
    if (deleter_) deleter_(data_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  std::size_t bytes_;
  Device device_;
  Deleter deleter_;
};

}  // namespace ellipse
