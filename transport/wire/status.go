// Package wire is quorumq's wire contract beyond the generated stubs
// (package quorumqpb): what the server and the Go client must agree on,
// and nothing of the server. It holds the typed gRPC error details, the
// request limits with the name and message rules both sides check, and
// the protobuf codec and buffer pool both sides use. The client imports it
// and quorumqpb, never the server's packages (transport, cluster), so a
// change inside the server cannot break a user's build.
//
// Errors cross the wire as gRPC status codes with typed details, so a client
// can tell "go elsewhere" from "may have happened" from "will never work":
//
//	Unavailable        + NotLeader       not the leader; the detail names it when known
//	Unknown            + OutcomeUnknown  submitted to Raft, fate unknown: retry with the same IDs
//	InvalidArgument    + QueueError      the request is wrong; the message names the field
//	NotFound           + QueueError      unknown queue
//	AlreadyExists      + QueueError      the queue exists
//	ResourceExhausted  + QueueError      queue full, or a limit
//	FailedPrecondition + QueueError      lease lost, out of order, receipt of another queue
package wire

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/protoadapt"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// NotLeaderError is the error a follower returns for a request only the
// leader can serve. id and apiAddr may be empty when no leader is known.
func NotLeaderError(id, apiAddr string) error {
	msg := "not the leader; no leader known"
	if id != "" {
		msg = "not the leader; leader is " + id + " at " + apiAddr
	}
	return withDetail(codes.Unavailable, msg, &quorumqpb.NotLeader{LeaderId: id, LeaderApiAddr: apiAddr})
}

// OutcomeUnknownError reports that a command reached Raft but its outcome is
// unknown: it may or may not have been applied. A retry must reuse the same
// dedup and request IDs.
func OutcomeUnknownError(reason string) error {
	return withDetail(codes.Unknown, "outcome unknown: "+reason, &quorumqpb.OutcomeUnknown{Reason: reason})
}

// QueueError turns an FSM error code into a status error with the matching
// gRPC code. code must not be fsmpb.ErrorCode_OK.
func QueueError(code fsmpb.ErrorCode, msg string) error {
	return withDetail(CodeOf(code), msg, &quorumqpb.QueueError{Code: code, Message: msg})
}

// CodeOf maps an FSM error code to the gRPC code it travels as.
func CodeOf(code fsmpb.ErrorCode) codes.Code {
	switch code {
	case fsmpb.ErrorCode_OK:
		return codes.OK
	case fsmpb.ErrorCode_INVALID_ARGUMENT, fsmpb.ErrorCode_MALFORMED:
		return codes.InvalidArgument
	case fsmpb.ErrorCode_QUEUE_NOT_FOUND, fsmpb.ErrorCode_UNKNOWN_MESSAGE:
		return codes.NotFound
	case fsmpb.ErrorCode_QUEUE_EXISTS:
		return codes.AlreadyExists
	case fsmpb.ErrorCode_QUEUE_FULL:
		return codes.ResourceExhausted
	case fsmpb.ErrorCode_LEASE_LOST, fsmpb.ErrorCode_OUT_OF_ORDER, fsmpb.ErrorCode_WRONG_QUEUE:
		return codes.FailedPrecondition
	default:
		return codes.Internal
	}
}

// LeaderHint returns the leader named by a NotLeader detail in err. ok is
// false when err carries no NotLeader detail; id is empty when the node
// knew no leader.
func LeaderHint(err error) (id, apiAddr string, ok bool) {
	var d *quorumqpb.NotLeader
	if !detail(err, &d) {
		return "", "", false
	}
	return d.GetLeaderId(), d.GetLeaderApiAddr(), true
}

// IsOutcomeUnknown reports whether err carries an OutcomeUnknown detail.
func IsOutcomeUnknown(err error) bool {
	var d *quorumqpb.OutcomeUnknown
	return detail(err, &d)
}

// QueueErrorCode returns the FSM error code carried by err, if any.
func QueueErrorCode(err error) (fsmpb.ErrorCode, bool) {
	var d *quorumqpb.QueueError
	if !detail(err, &d) {
		return fsmpb.ErrorCode_OK, false
	}
	return d.GetCode(), true
}

func withDetail(c codes.Code, msg string, d protoadapt.MessageV1) error {
	st := status.New(c, msg)
	if withD, err := st.WithDetails(d); err == nil {
		st = withD
	}
	return st.Err()
}

// detail finds the first status detail of type T in err.
func detail[T any](err error, out *T) bool {
	if err == nil {
		return false
	}
	st, ok := status.FromError(err)
	if !ok {
		var se interface{ GRPCStatus() *status.Status }
		if !errors.As(err, &se) {
			return false
		}
		st = se.GRPCStatus()
	}
	for _, d := range st.Details() {
		if v, ok := d.(T); ok {
			*out = v
			return true
		}
	}
	return false
}
