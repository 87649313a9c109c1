// Package transport is the server side of quorumq's wire: the gRPC Queue
// service over a node's Backend, which checks every request against the
// limits before anything is proposed and runs long polls (which take
// turns per queue); the HTTP/JSON handler that transcodes the REST routes
// into calls of those services, through the gRPC server's interceptors
// (httpapi.go, httpunary.go), whose concurrent enqueues of a queue
// are gathered into one Raft entry (gather.go); the web console (package
// transport/console); and (in package transport/raftnet) the Raft stream
// layer. The contract it shares with clients (the generated API in
// quorumqpb; error details, limits and codec in wire) lives in packages of
// its own, so that the client does not import the server.
package transport
