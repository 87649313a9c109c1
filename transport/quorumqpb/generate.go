// Package quorumqpb holds the client API (quorumq.proto): the Queue and
// Cluster gRPC services, their messages and their HTTP/JSON mappings
// (google.api.http). The generated code and the OpenAPI document
// (docs/openapi.json) are committed; `go generate ./transport/quorumqpb`
// regenerates them and needs protoc, protoc-gen-go, protoc-gen-go-grpc,
// protoc-gen-grpc-gateway, protoc-gen-openapiv2 and
// google/api/{annotations,http}.proto (Debian:
// golang-github-gogo-googleapis-dev); see README.md.
package quorumqpb

//go:generate protoc -I ../.. -I /usr/share/gocode/src/github.com/gogo/googleapis --go_out=../.. --go_opt=paths=source_relative --go_opt=Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations --go_opt=Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations --go-grpc_out=../.. --go-grpc_opt=paths=source_relative --go-grpc_opt=Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations --go-grpc_opt=Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations --grpc-gateway_out=../.. --grpc-gateway_opt=paths=source_relative,Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations,Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations --openapiv2_out=../../docs --openapiv2_opt=allow_merge=true,merge_file_name=openapi,Mgoogle/api/annotations.proto=google.golang.org/genproto/googleapis/api/annotations,Mgoogle/api/http.proto=google.golang.org/genproto/googleapis/api/annotations transport/quorumqpb/quorumq.proto
//go:generate mv ../../docs/openapi.swagger.json ../../docs/openapi.json
