// Package fsmpb holds the protobuf encoding of the state machine and its
// generated Go code, in three files: command.proto (the replicated command
// log), view.proto (results and queue views) and snapshot.proto (the snapshot
// format). All three are one protobuf package, so the Go types and the wire
// encoding do not depend on which file a message is in. The generated code is
// committed; `go generate ./...` regenerates it and needs protoc and
// protoc-gen-go (see README.md).
package fsmpb

//go:generate protoc -I ../.. --go_out=../.. --go_opt=paths=source_relative fsm/fsmpb/command.proto fsm/fsmpb/view.proto fsm/fsmpb/snapshot.proto
