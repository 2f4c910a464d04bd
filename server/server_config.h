// Loading, normalising and validating convnext-server's configuration (config.proto): from a
// protobuf text file and/or --model NAME=CHECKPOINT flags. Normalisation fills every unset field
// with its documented default, so that validation and the rest of the server see complete values;
// validation runs at start-up and names the model and field of any error.
#ifndef CONVNEXT_SERVER_SERVER_CONFIG_H_
#define CONVNEXT_SERVER_SERVER_CONFIG_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/config.pb.h"

namespace convnext::server {

// The default of ServerConfig.max_message_bytes: the largest request message accepted.
inline constexpr uint32_t kDefaultMaxMessageBytes = 64 << 20;
// The default of ServerConfig.max_concurrent_streams: calls at once on one client connection.
inline constexpr uint32_t kDefaultMaxConcurrentStreams = 256;

// The version a model config without one serves.
inline constexpr char kDefaultVersion[] = "1";

// Parses a protobuf text-format ServerConfig file. Relative checkpoint and labels paths in it are
// taken relative to the file's directory.
absl::StatusOr<server::ServerConfig> ReadConfigFile(const std::string& path);

// The same for the text of such a file; `path` names it in messages and anchors relative paths.
absl::StatusOr<server::ServerConfig> ParseConfigText(const std::string& text,
                                                     const std::string& path);

// Parses one model's config (the fields of a config file's `model { ... }` entry, in protobuf
// text format: ModelControl.LoadModel's config), fills its defaults from the server's normalised
// config (memory_bytes <= 0: twice its max_memory_bytes) and validates it. INVALID_ARGUMENT
// naming the line or the field. Relative paths stay relative to the working directory.
absl::StatusOr<server::ModelConfig> ParseModelConfigText(const std::string& text,
                                                         const server::ServerConfig& server,
                                                         int64_t memory_bytes);

// Parses "NAME=CHECKPOINT" (a --model flag) into a ModelConfig with defaults left unset.
// CHECKPOINT may be a folder holding exactly one checkpoint file (.safetensors, .pth, .pt, .bin;
// other files, such as a Hugging Face config.json, may sit beside it).
absl::StatusOr<server::ModelConfig> ParseModelFlag(const std::string& flag);

// Fills unset fields with their defaults (see config.proto). `cores` and `memory_bytes` are what
// the machine or container gives the process (server/machine.h).
void NormalizeConfig(server::ServerConfig* config, int cores, int64_t memory_bytes);
// The same for one model config, with the server's (normalised) config for the defaults it
// inherits (a model loaded at run time by the control API or the config watch).
void NormalizeModelConfig(server::ModelConfig* model, const server::ServerConfig& server,
                          int64_t memory_bytes);

// Checks a normalised config (model architectures are checked when the models load).
// INVALID_ARGUMENT naming the model and the field.
absl::Status ValidateServerConfig(const server::ServerConfig& config);
// The checks of one normalised model config (every check that does not involve other models).
absl::Status ValidateModelConfig(const server::ModelConfig& model);

}  // namespace convnext::server

#endif  // CONVNEXT_SERVER_SERVER_CONFIG_H_
