// Package fsmpb holds the protobuf encoding of the replicated command log
// (fsm.proto) and its generated Go code. The generated code is committed;
// `go generate ./...` regenerates it and needs protoc and protoc-gen-go (see
// README.md).
package fsmpb

//go:generate protoc -I ../.. --go_out=../.. --go_opt=paths=source_relative fsm/fsmpb/fsm.proto
