// Package quorumqpb holds the client API (quorumq.proto): the Queue and
// Cluster gRPC services and their messages. The generated code is committed;
// `go generate ./...` regenerates it and needs protoc, protoc-gen-go and
// protoc-gen-go-grpc (see README.md).
package quorumqpb

//go:generate protoc -I ../.. --go_out=../.. --go_opt=paths=source_relative --go-grpc_out=../.. --go-grpc_opt=paths=source_relative transport/quorumqpb/quorumq.proto
