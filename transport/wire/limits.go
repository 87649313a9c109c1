package wire

import (
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// Limits bound what one request may carry. A request beyond a limit is
// rejected with InvalidArgument naming the field and the limit; nothing is
// clamped silently. The zero value of a field means its default; a field
// marked "at most" cannot exceed the state machine's own limit (Check).
type Limits struct {
	MaxMessageBytes  int           // body + attributes of one message; default and at most 1 MiB
	MaxBatchMessages int           // messages in one enqueue or transaction; default and at most 1000
	MaxBatchBytes    int           // bodies + attributes of one request; default 8 MiB
	MaxReceipts      int           // receipts in one ack, nack, extend or receive; default and at most 1000
	MaxReceive       uint32        // messages one receive may lease; default and at most 1000
	MaxWait          time.Duration // long-poll wait; default 20 s
	MaxVisibility    time.Duration // lease length; default and at most 12 h
	MaxDelay         time.Duration // enqueue or nack delay; default and at most 12 h
	MaxIDBytes       int           // dedup ID, request ID, after_dedup_id; default and at most 128
	MaxAttributes    int           // attributes per message; default and at most 32
	MaxQueues        int           // queues in the cluster; default 10,000
}

// DefaultMaxWait is the default longest long-poll wait of one receive.
// The state machine does not bound it (a wait costs no log entry); clients
// use it as the longest wait they ask for.
const DefaultMaxWait = 20 * time.Second

// DefaultLimits returns the limits used when a field is zero. Those the
// state machine also enforces are its limits, so that what passes here
// passes there.
func DefaultLimits() Limits {
	return Limits{
		MaxMessageBytes:  limits.MaxBodyBytes,
		MaxBatchMessages: limits.MaxBatch,
		MaxBatchBytes:    8 << 20,
		MaxReceipts:      limits.MaxBatch,
		MaxReceive:       limits.MaxBatch,
		MaxWait:          DefaultMaxWait,
		MaxVisibility:    limits.MaxVisibility,
		MaxDelay:         limits.MaxDelay,
		MaxIDBytes:       limits.MaxDedupID,
		MaxAttributes:    limits.MaxAttributes,
		MaxQueues:        10000,
	}
}

// Check refuses limits above the state machine's own: a request within
// such a limit would pass the API and be refused by Apply, after costing a
// log entry. It also refuses negative limits and a batch size below the
// message size, which no request could meet.
func (l Limits) Check() error {
	for _, c := range []struct {
		name     string
		v        any
		negative bool
	}{
		{"max message size", l.MaxMessageBytes, l.MaxMessageBytes < 0},
		{"max batch messages", l.MaxBatchMessages, l.MaxBatchMessages < 0},
		{"max batch size", l.MaxBatchBytes, l.MaxBatchBytes < 0},
		{"max receipts", l.MaxReceipts, l.MaxReceipts < 0},
		{"max wait", l.MaxWait, l.MaxWait < 0},
		{"max visibility", l.MaxVisibility, l.MaxVisibility < 0},
		{"max delay", l.MaxDelay, l.MaxDelay < 0},
		{"max ID bytes", l.MaxIDBytes, l.MaxIDBytes < 0},
		{"max attributes", l.MaxAttributes, l.MaxAttributes < 0},
		{"max queues", l.MaxQueues, l.MaxQueues < 0},
	} {
		if c.negative {
			return fmt.Errorf("limits: %s is %v, want a positive value (or 0 for the default)", c.name, c.v)
		}
	}
	l = l.WithDefaults()
	d := DefaultLimits()
	for _, c := range []struct {
		name     string
		v, limit any
		over     bool
	}{
		{"max message size", l.MaxMessageBytes, d.MaxMessageBytes, l.MaxMessageBytes > d.MaxMessageBytes},
		{"max batch messages", l.MaxBatchMessages, d.MaxBatchMessages, l.MaxBatchMessages > d.MaxBatchMessages},
		{"max receipts", l.MaxReceipts, d.MaxReceipts, l.MaxReceipts > d.MaxReceipts},
		{"max receive", l.MaxReceive, d.MaxReceive, l.MaxReceive > d.MaxReceive},
		{"max visibility", l.MaxVisibility, d.MaxVisibility, l.MaxVisibility > d.MaxVisibility},
		{"max delay", l.MaxDelay, d.MaxDelay, l.MaxDelay > d.MaxDelay},
		{"max ID bytes", l.MaxIDBytes, d.MaxIDBytes, l.MaxIDBytes > d.MaxIDBytes},
		{"max attributes", l.MaxAttributes, d.MaxAttributes, l.MaxAttributes > d.MaxAttributes},
	} {
		if c.over {
			return fmt.Errorf("limits: %s is %v, the state machine allows at most %v", c.name, c.v, c.limit)
		}
	}
	if l.MaxBatchBytes < l.MaxMessageBytes {
		return fmt.Errorf("limits: max batch size %d is smaller than max message size %d: a single message could never be sent", l.MaxBatchBytes, l.MaxMessageBytes)
	}
	return nil
}

// WithDefaults returns l with every zero field filled from DefaultLimits.
func (l Limits) WithDefaults() Limits {
	d := DefaultLimits()
	orDefault(&l.MaxMessageBytes, d.MaxMessageBytes)
	orDefault(&l.MaxBatchMessages, d.MaxBatchMessages)
	orDefault(&l.MaxBatchBytes, d.MaxBatchBytes)
	orDefault(&l.MaxReceipts, d.MaxReceipts)
	orDefault(&l.MaxReceive, d.MaxReceive)
	orDefault(&l.MaxWait, d.MaxWait)
	orDefault(&l.MaxVisibility, d.MaxVisibility)
	orDefault(&l.MaxDelay, d.MaxDelay)
	orDefault(&l.MaxIDBytes, d.MaxIDBytes)
	orDefault(&l.MaxAttributes, d.MaxAttributes)
	orDefault(&l.MaxQueues, d.MaxQueues)
	return l
}

// orDefault sets *v to d when *v is zero.
func orDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// MaxRecvMsgSize is the gRPC receive limit a server needs so that a
// full batch reaches validation (and gets a clear error) instead of being
// cut off by gRPC's 4 MiB default.
func (l Limits) MaxRecvMsgSize() int {
	l = l.WithDefaults()
	return l.MaxBatchBytes + l.MaxBatchMessages*(l.MaxIDBytes+64) + 1<<20
}

// ValidateQueueName checks a queue name with the state machine's rule
// ([A-Za-z0-9._-]{1,128}); field names the request field in the error,
// an InvalidArgument status.
func ValidateQueueName(field, name string) error {
	if p := limits.QueueNameProblem(name); p != "" {
		return InvalidArgument("%s: %s", field, p)
	}
	return nil
}

// ValidateMessage checks message m, named field in errors, against the
// state machine's own limits (body size, dedup ID, delay, attributes); the
// error is an InvalidArgument status. A server's configured Limits may be
// lower (checkMessages).
func ValidateMessage(field string, m *fsmpb.Message) error {
	if p := limits.MessageProblem(m); p != "" {
		return InvalidArgument("%s.%s", field, p)
	}
	return nil
}

// MaxNackReason is the longest reason a nack or reject may give, in bytes.
const MaxNackReason = limits.MaxNackReason

// ValidateNackReason checks the reason a nack or reject gives against the
// state machine's limit (limits.MaxNackReason); the error is an
// InvalidArgument status naming field.
func ValidateNackReason(field, reason string) error {
	if len(reason) > limits.MaxNackReason {
		return InvalidArgument("%s: %d bytes, limit is %d", field, len(reason), limits.MaxNackReason)
	}
	return nil
}

// ValidatePeek checks a peek's max (1 to limits.MaxPeek) and state filter
// with the state machine's rule, so the API and the Go client refuse what
// Peek would.
func ValidatePeek(max int, state fsmpb.PeekState) error {
	if p := limits.PeekProblem(max, state); p != "" {
		return InvalidArgument("%s", p)
	}
	return nil
}

// MaxConsumer is the longest consumer name a receive may give, in bytes.
const MaxConsumer = limits.MaxConsumer

// ValidateConsumer checks a receive's consumer name with the state
// machine's rule (limits.ConsumerProblem); the error is an
// InvalidArgument status naming field.
func ValidateConsumer(field, name string) error {
	if p := limits.ConsumerProblem(name); p != "" {
		return InvalidArgument("%s: %s", field, p)
	}
	return nil
}

// ValidateLookup checks that a lookup names exactly one of an id and a
// dedup ID, and the dedup ID's length (limits.MaxDedupID).
func ValidateLookup(id uint64, dedupID string) error {
	switch {
	case id == 0 && dedupID == "":
		return InvalidArgument("id, dedup_id: give an id or a dedup ID")
	case id != 0 && dedupID != "":
		return InvalidArgument("id, dedup_id: give an id or a dedup ID, not both")
	case len(dedupID) > limits.MaxDedupID:
		return InvalidArgument("dedup_id: %d bytes, limit is %d", len(dedupID), limits.MaxDedupID)
	}
	return nil
}

// InvalidArgument is the InvalidArgument status error of a request the
// API refuses, with a QueueError detail carrying the same message.
func InvalidArgument(format string, args ...any) error {
	msg := fmt.Sprintf(format, args...)
	st := status.New(codes.InvalidArgument, msg)
	if d, err := st.WithDetails(&quorumqpb.QueueError{Code: fsmpb.ErrorCode_INVALID_ARGUMENT, Message: msg}); err == nil {
		st = d
	}
	return st.Err()
}
