package transport

import (
	"fmt"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/quorumq/quorumq/fsm"
	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// limits are the server's request limits (wire.Limits, defaults filled)
// with the checks of each kind of request.
type limits struct{ wire.Limits }

// invalid is the InvalidArgument refusal of a request; the message names
// the field and the limit.
func invalid(format string, args ...any) error { return wire.InvalidArgument(format, args...) }

// resourceExhausted is the refusal of a request that would pass a
// cluster-wide limit; the message names the limit.
func resourceExhausted(format string, args ...any) error {
	return status.Error(codes.ResourceExhausted, fmt.Sprintf(format, args...))
}

func checkDuration(field string, ns int64, max time.Duration) error {
	if ns < 0 {
		return invalid("%s: %v is negative", field, time.Duration(ns))
	}
	if ns > int64(max) {
		return invalid("%s: %v exceeds the limit of %v", field, time.Duration(ns), max)
	}
	return nil
}

func (l limits) checkID(field, id string) error {
	if len(id) > l.MaxIDBytes {
		return invalid("%s: %d bytes, limit is %d", field, len(id), l.MaxIDBytes)
	}
	return nil
}

// messageSize is what a message counts against the size limits.
func messageSize(m *fsmpb.Message) int {
	n := len(m.GetBody())
	for _, a := range m.GetAttributes() {
		n += len(a.GetKey()) + len(a.GetValue())
	}
	return n
}

// checkMessages validates one enqueue's messages; total carries the bytes
// and count of the whole request across enqueues of a transaction.
func (l limits) checkMessages(field string, msgs []*fsmpb.Message, total *batchTotal) error {
	if len(msgs) == 0 {
		return invalid("%s: no messages (want 1..%d)", field, l.MaxBatchMessages)
	}
	for i, m := range msgs {
		f := fmt.Sprintf("%s[%d]", field, i)
		if m == nil {
			return invalid("%s: message is null", f)
		}
		size := messageSize(m)
		if size > l.MaxMessageBytes {
			return invalid("%s: body and attributes are %d bytes, limit is %d (max message size)", f, size, l.MaxMessageBytes)
		}
		if err := l.checkID(f+".dedup_id", m.GetDedupId()); err != nil {
			return err
		}
		if err := checkDuration(f+".delay_ns", m.GetDelayNs(), l.MaxDelay); err != nil {
			return err
		}
		if len(m.GetAttributes()) > l.MaxAttributes {
			return invalid("%s.attributes: %d attributes, limit is %d", f, len(m.GetAttributes()), l.MaxAttributes)
		}
		if err := wire.ValidateMessage(f, m); err != nil {
			return err
		}
		total.messages++
		total.bytes += size
	}
	if total.messages > l.MaxBatchMessages {
		return invalid("%s: %d messages in the request, limit is %d per batch", field, total.messages, l.MaxBatchMessages)
	}
	if total.bytes > l.MaxBatchBytes {
		return invalid("%s: %d bytes in the request, limit is %d per batch", field, total.bytes, l.MaxBatchBytes)
	}
	return nil
}

type batchTotal struct{ messages, bytes int }

// checkReceipts validates the receipts of a call on queue and then clears
// each receipt's queue: the check is done here, the state machine does not
// read it, and the Raft log need not carry the name once per receipt.
func (l limits) checkReceipts(field, queue string, rs []*fsmpb.Receipt, allowEmpty bool) error {
	if len(rs) == 0 && !allowEmpty {
		return invalid("%s: no receipts (want 1..%d)", field, l.MaxReceipts)
	}
	if len(rs) > l.MaxReceipts {
		return invalid("%s: %d receipts, limit is %d", field, len(rs), l.MaxReceipts)
	}
	for i, r := range rs {
		if r == nil {
			return invalid("%s[%d]: receipt is null", field, i)
		}
		if r.GetMessageId() == 0 {
			return invalid("%s[%d].message_id: 0 is not a message ID", field, i)
		}
		if r.GetAttempt() == 0 {
			return invalid("%s[%d].attempt: 0 is not a delivery attempt", field, i)
		}
		if r.GetQueue() != "" && r.GetQueue() != queue {
			return wire.QueueError(fsmpb.ErrorCode_WRONG_QUEUE, fmt.Sprintf("%s[%d]: receipt of queue %q used on queue %q", field, i, r.GetQueue(), queue))
		}
	}
	for _, r := range rs {
		r.Queue = ""
	}
	return nil
}

func (l limits) checkSettings(field, queue string, s *fsmpb.QueueSettings) error {
	if s == nil {
		return nil
	}
	if s.VisibilityTimeoutNs != nil {
		if err := checkDuration(field+".visibility_timeout_ns", s.GetVisibilityTimeoutNs(), l.MaxVisibility); err != nil {
			return err
		}
		if s.GetVisibilityTimeoutNs() == 0 {
			return invalid("%s.visibility_timeout_ns: must be positive", field)
		}
	}
	if s.DeadLetterQueue != nil && s.GetDeadLetterQueue() != "" {
		if err := wire.ValidateQueueName(field+".dead_letter_queue", s.GetDeadLetterQueue()); err != nil {
			return err
		}
		if s.GetDeadLetterQueue() == queue {
			return invalid("%s.dead_letter_queue: a queue cannot be its own dead-letter queue", field)
		}
	}
	if s.DedupWindowNs != nil && s.GetDedupWindowNs() <= 0 {
		return invalid("%s.dedup_window_ns: must be positive, got %v", field, time.Duration(s.GetDedupWindowNs()))
	}
	if s.RetentionNs != nil && s.GetRetentionNs() < 0 {
		return invalid("%s.retention_ns: %v is negative (0 keeps messages forever)", field, time.Duration(s.GetRetentionNs()))
	}
	if err := fsm.ValidateSettings(queue, s); err != nil {
		return invalid("%v", err)
	}
	return nil
}
