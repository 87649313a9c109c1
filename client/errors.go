package client

import (
	"errors"
	"fmt"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// Errors returned by the client. Every error the client returns for one of
// these conditions matches it with errors.Is; the error text adds the
// server's message, which names the field or queue concerned.
var (
	// ErrLeaseLost: the receipt's message was delivered again (or its lease
	// expired and it was redelivered) since the receipt was handed out. The
	// work done under it may be repeated by another consumer.
	ErrLeaseLost = errors.New("lease lost")
	// ErrQueueNotFound: the named queue does not exist.
	ErrQueueNotFound = errors.New("queue not found")
	// ErrQueueExists: CreateQueue of a queue that exists.
	ErrQueueExists = errors.New("queue exists")
	// ErrQueueFull: the queue is at its max depth; nothing was enqueued.
	ErrQueueFull = errors.New("queue full")
	// ErrOutcomeUnknown: a call that is not safe to retry reached the
	// cluster, but whether it took effect is unknown.
	ErrOutcomeUnknown = errors.New("outcome unknown")
	// ErrInvalidArgument: the request is malformed; the message names the
	// field and the limit.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrUnauthenticated: the cluster rejected the credentials (token/TLS).
	ErrUnauthenticated = errors.New("unauthenticated")
	// ErrPermissionDenied: the credentials do not allow the call.
	ErrPermissionDenied = errors.New("permission denied")
	// ErrUnknownMessage: a receipt names a message the queue never had, or
	// one deleted longer ago than the queue's dedup window.
	ErrUnknownMessage = errors.New("unknown message")
	// ErrOutOfOrder: an enqueue was refused because the batch it was
	// pipelined behind is not in the queue (it failed, or was not applied
	// first). A Producer handles it by sending the batch again.
	ErrOutOfOrder = errors.New("out of order")
	// ErrWrongQueue: a receipt was used on a queue other than the one
	// that delivered it; nothing was acked, nacked or extended.
	ErrWrongQueue = errors.New("receipt of another queue")
	// ErrClosed: the Client or Producer was closed.
	ErrClosed = errors.New("client closed")
)

// invalidArg builds an ErrInvalidArgument error that names the field.
func invalidArg(field, format string, args ...any) error {
	return fmt.Errorf("%w: %s: %s", ErrInvalidArgument, field, fmt.Sprintf(format, args...))
}

// fromStatus maps an error returned by the server to the client's typed
// errors, keeping the server's message. Errors it does not recognise are
// returned unchanged (wrapped with op).
func fromStatus(op string, err error) error {
	if err == nil {
		return nil
	}
	st, ok := status.FromError(err)
	if !ok {
		return fmt.Errorf("%s: %w", op, err)
	}
	var kind error
	if code, ok := wire.QueueErrorCode(err); ok {
		kind = errorOfCode(code)
	}
	if kind == nil {
		// Without a QueueError detail only the codes that cannot come from
		// gRPC's own machinery are typed: a ResourceExhausted without detail
		// is a message-size limit, not a full queue.
		switch st.Code() {
		case codes.InvalidArgument:
			kind = ErrInvalidArgument
		case codes.Unauthenticated:
			kind = ErrUnauthenticated
		case codes.PermissionDenied:
			kind = ErrPermissionDenied
		}
	}
	if kind == nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	return &Error{Op: op, Kind: kind, Message: st.Message(), cause: err}
}

func errorOfCode(code fsmpb.ErrorCode) error {
	switch code {
	case fsmpb.ErrorCode_INVALID_ARGUMENT, fsmpb.ErrorCode_MALFORMED:
		return ErrInvalidArgument
	case fsmpb.ErrorCode_QUEUE_NOT_FOUND:
		return ErrQueueNotFound
	case fsmpb.ErrorCode_QUEUE_EXISTS:
		return ErrQueueExists
	case fsmpb.ErrorCode_QUEUE_FULL:
		return ErrQueueFull
	case fsmpb.ErrorCode_LEASE_LOST:
		return ErrLeaseLost
	case fsmpb.ErrorCode_UNKNOWN_MESSAGE:
		return ErrUnknownMessage
	case fsmpb.ErrorCode_OUT_OF_ORDER:
		return ErrOutOfOrder
	case fsmpb.ErrorCode_WRONG_QUEUE:
		return ErrWrongQueue
	}
	return nil
}

// Error is a typed error from the cluster: Kind is one of the package's
// ErrX values and matches with errors.Is; Message is the server's text.
type Error struct {
	Op      string // client call, e.g. "Send"
	Kind    error  // ErrQueueNotFound, ErrQueueFull, ...
	Message string
	cause   error
}

func (e *Error) Error() string {
	s := e.Kind.Error() + ": " + strings.TrimSpace(e.Message)
	if e.Op != "" {
		s = e.Op + ": " + s
	}
	return s
}

// Unwrap returns the kind and the underlying gRPC status error.
func (e *Error) Unwrap() []error { return []error{e.Kind, e.cause} }

// ReceiptError is the outcome of one receipt that an Ack, Nack or Extend
// could not apply.
type ReceiptError struct {
	Receipt Receipt
	Err     error // ErrLeaseLost or ErrUnknownMessage
}

// AckError lists the receipts of an Ack, Nack, Extend or Transact that
// failed; the others succeeded (except in a Transact, which is all or
// nothing). errors.Is(err, ErrLeaseLost) is true when any receipt lost its
// lease.
type AckError struct {
	Op     string
	Queue  string
	Failed []ReceiptError
}

func (e *AckError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s: %d receipt(s) failed:", e.Op, e.Queue, len(e.Failed))
	for i, f := range e.Failed {
		if i == 5 {
			fmt.Fprintf(&b, " ... and %d more", len(e.Failed)-5)
			break
		}
		fmt.Fprintf(&b, " %d/%d: %v;", f.Receipt.MessageID, f.Receipt.Attempt, f.Err)
	}
	return strings.TrimSuffix(b.String(), ";")
}

// Unwrap returns the distinct errors of the failed receipts.
func (e *AckError) Unwrap() []error {
	var out []error
	seen := map[error]bool{}
	for _, f := range e.Failed {
		if !seen[f.Err] {
			seen[f.Err] = true
			out = append(out, f.Err)
		}
	}
	return out
}

// ackOutcomeErr maps one per-receipt outcome; nil means success.
func ackOutcomeErr(o fsmpb.AckOutcome) error {
	switch o {
	case fsmpb.AckOutcome_ACK_OK:
		return nil
	case fsmpb.AckOutcome_ACK_LEASE_LOST:
		return ErrLeaseLost
	case fsmpb.AckOutcome_ACK_UNKNOWN_MESSAGE:
		return ErrUnknownMessage
	}
	return fmt.Errorf("quorumq: unknown ack outcome %d", o)
}

// ackError builds an *AckError from per-receipt outcomes, or nil when all
// succeeded. skip reports outcomes to treat as success.
func ackError(op, queue string, receipts []Receipt, outcomes []fsmpb.AckOutcome, skip func(fsmpb.AckOutcome) bool) error {
	if len(outcomes) != len(receipts) {
		return fmt.Errorf("%s %s: server returned %d outcomes for %d receipts", op, queue, len(outcomes), len(receipts))
	}
	var failed []ReceiptError
	for i, o := range outcomes {
		if skip != nil && skip(o) {
			continue
		}
		if err := ackOutcomeErr(o); err != nil {
			failed = append(failed, ReceiptError{Receipt: receipts[i], Err: err})
		}
	}
	if failed == nil {
		return nil
	}
	return &AckError{Op: op, Queue: queue, Failed: failed}
}
