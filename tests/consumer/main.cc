// Uses the installed client package: asks a server for its health and prints the outcome.
//   consumer HOST:PORT
#include <convnext/client.h>

#include <cstdio>

int main(int argc, char** argv) {
  convnext::client::ClientOptions options;
  options.target = argc > 1 ? argv[1] : "localhost:50051";
  options.deadline = absl::Seconds(10);
  auto client = convnext::client::Client::Create(options);
  if (!client.ok()) return 2;
  absl::StatusOr<bool> serving = (*client)->Health();
  if (!serving.ok()) {
    std::printf("health failed: %s\n", serving.status().ToString().c_str());
    return 1;
  }
  absl::StatusOr<convnext::v1::ListModelsResponse> models = (*client)->ListModels();
  std::printf("serving=%d default_model=%s\n", *serving ? 1 : 0,
              models.ok() ? models->default_model().c_str() : "?");
  return 0;
}
