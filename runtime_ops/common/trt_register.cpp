// The TensorRT plugin library's entry points: IPluginRegistry::loadLibrary (Python:
// trt.get_plugin_registry().load_library(path)) calls getCreators and registers what it returns.
// spa_trt_creator_info is for tests: it exercises the creators and plugins without TensorRT's
// builder (which needs a GPU in some TensorRT flavours).
#include <cstring>

#include "trt_base.h"

namespace spa {
namespace trt {
IPluginCreatorInterface* monarch_creator();
IPluginCreatorInterface* nm_creator();
}  // namespace trt
}  // namespace spa

using nvinfer1::IPluginCreatorInterface;

namespace {
nvinfer1::ILoggerFinder* g_logger_finder = nullptr;
}

extern "C" __attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  g_logger_finder = finder;
}

extern "C" __attribute__((visibility("default"))) IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static IPluginCreatorInterface* creators[] = {spa::trt::monarch_creator(), spa::trt::nm_creator()};
  nbCreators = 2;
  return creators;
}
