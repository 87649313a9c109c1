// Package docs embeds the generated OpenAPI document of the HTTP/JSON API
// (openapi.json, written by `go generate ./transport/quorumqpb`), so that a
// node serves the committed file at /v1/openapi.json and no second copy
// can drift from it.
package docs

import _ "embed"

// OpenAPI is docs/openapi.json: the OpenAPI 2.0 description of every
// HTTP/JSON route in transport/quorumqpb/quorumq.proto.
//
//go:embed openapi.json
var OpenAPI []byte
