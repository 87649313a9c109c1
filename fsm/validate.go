package fsm

import (
	"math"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/fsm/limits"
)

// Defaults and limits. Every bad value is rejected with an error naming the
// field and the limit; nothing is clamped.
const (
	DefaultVisibility  = 30 * time.Second
	DefaultDedupWindow = 10 * time.Minute
	DefaultRetention   = 14 * 24 * time.Hour

	MinVisibility  = time.Millisecond
	MinDedupWindow = time.Second
	MaxDedupWindow = 7 * 24 * time.Hour
	MinRetention   = time.Second
	MaxRetention   = 365 * 24 * time.Hour
	MaxDeliveries  = 1000
	MaxRequestID   = 128

	// The limits the API and the client check too live in package limits,
	// which does not depend on the state machine; these are their names here.
	MaxVisibility    = limits.MaxVisibility
	MaxDelay         = limits.MaxDelay
	MaxQueueName     = limits.MaxQueueName
	MaxBatch         = limits.MaxBatch
	MaxBodyBytes     = limits.MaxBodyBytes
	MaxDedupID       = limits.MaxDedupID
	MaxAttributes    = limits.MaxAttributes
	MaxAttributeKey  = limits.MaxAttributeKey
	MaxAttributeVal  = limits.MaxAttributeVal
	MaxTransactionOp = limits.MaxTransactionOp
	MaxNackReason    = limits.MaxNackReason

	// Rules is the newest Command.rules this release applies (see
	// fsmpb/command.proto): 1, dead-letter queues must exist, are deleted
	// only with force, and a dead letter with nowhere to go stays dead in
	// its queue; 2, a message records the Raft index of the command that
	// last changed it, and a tombstone what removed its message (expired,
	// purged, dead-lettered or redriven, and where to), for Lookup.
	Rules = 2

	// MaxNow bounds a command's now (about the year 2096) so that now plus
	// any allowed duration cannot overflow int64.
	MaxNow = int64(4e18)
)

func defaultSettings() settings {
	return settings{
		visibility:  int64(DefaultVisibility),
		dedupWindow: int64(DefaultDedupWindow),
		retention:   int64(DefaultRetention),
	}
}

func (s settings) proto() *fsmpb.QueueSettings {
	return &fsmpb.QueueSettings{
		VisibilityTimeoutNs: proto.Int64(s.visibility),
		MaxDeliveries:       proto.Uint32(s.maxDeliveries),
		DeadLetterQueue:     proto.String(s.deadLetter),
		DedupWindowNs:       proto.Int64(s.dedupWindow),
		RetentionNs:         proto.Int64(s.retention),
		MaxDepth:            proto.Uint64(s.maxDepth),
	}
}

// merge applies the fields set in p over s and validates the result for the
// queue named name.
func (s settings) merge(name string, p *fsmpb.QueueSettings) (settings, *cmdError) {
	if p == nil {
		p = &fsmpb.QueueSettings{}
	}
	if p.VisibilityTimeoutNs != nil {
		s.visibility = p.GetVisibilityTimeoutNs()
	}
	if p.MaxDeliveries != nil {
		s.maxDeliveries = p.GetMaxDeliveries()
	}
	if p.DeadLetterQueue != nil {
		s.deadLetter = p.GetDeadLetterQueue()
	}
	if p.DedupWindowNs != nil {
		s.dedupWindow = p.GetDedupWindowNs()
	}
	if p.RetentionNs != nil {
		s.retention = p.GetRetentionNs()
	}
	if p.MaxDepth != nil {
		s.maxDepth = p.GetMaxDepth()
	}
	if err := checkDuration("settings.visibility_timeout_ns", s.visibility, MinVisibility, MaxVisibility); err != nil {
		return s, err
	}
	if s.maxDeliveries > MaxDeliveries {
		return s, invalid("settings.max_deliveries is %d, limit is 0 (unlimited) to %d", s.maxDeliveries, MaxDeliveries)
	}
	if s.deadLetter != "" {
		if err := checkQueueName("settings.dead_letter_queue", s.deadLetter); err != nil {
			return s, err
		}
		if s.deadLetter == name {
			return s, invalid("settings.dead_letter_queue must not be the queue itself (%q)", name)
		}
	}
	if err := checkDuration("settings.dedup_window_ns", s.dedupWindow, MinDedupWindow, MaxDedupWindow); err != nil {
		return s, err
	}
	if s.retention != 0 {
		if err := checkDuration("settings.retention_ns", s.retention, MinRetention, MaxRetention); err != nil {
			return s, invalid("%s (or 0 to keep messages forever)", err.msg)
		}
	}
	return s, nil
}

func checkDuration(field string, v int64, lo, hi time.Duration) *cmdError {
	if v < int64(lo) || v > int64(hi) {
		return invalid("%s is %d ns, limit is %v to %v", field, v, lo, hi)
	}
	return nil
}

// checkOptionalDuration accepts 0 (meaning "use the default") or lo..hi.
func checkOptionalDuration(field string, v int64, lo, hi time.Duration) *cmdError {
	if v == 0 {
		return nil
	}
	if err := checkDuration(field, v, lo, hi); err != nil {
		return invalid("%s (or 0 for the queue's default)", err.msg)
	}
	return nil
}

func checkQueueName(field, name string) *cmdError {
	if p := limits.QueueNameProblem(name); p != "" {
		return invalid("%s: %s", field, p)
	}
	return nil
}

func checkCount(field string, n int) *cmdError {
	if n < 1 || n > MaxBatch {
		return invalid("%s has %d entries, limit is 1 to %d", field, n, MaxBatch)
	}
	return nil
}

// ValidateSettings checks the fields set in p as settings of queue, as a
// create or an update will.
func ValidateSettings(queue string, p *fsmpb.QueueSettings) error {
	if _, err := defaultSettings().merge(queue, p); err != nil {
		return err
	}
	return nil
}

// checkMessage checks message m; at names it, and is called only for an
// error: Apply checks every message on every node.
func checkMessage(at func() string, m *fsmpb.Message) *cmdError {
	if p := limits.MessageProblem(m); p != "" {
		return invalid("%s.%s", at(), p)
	}
	return nil
}

func checkReceipts(field string, rs []*fsmpb.Receipt) *cmdError {
	if err := checkCount(field, len(rs)); err != nil {
		return err
	}
	for i, r := range rs {
		if r == nil {
			return invalid("%s[%d] is empty", field, i)
		}
		if r.GetAttempt() == 0 {
			return invalid("%s[%d].attempt is 0, attempts start at 1", field, i)
		}
	}
	return nil
}

// addDur adds a validated duration to a validated now; the limits make
// overflow impossible, the check keeps that true if they ever change.
func addDur(now, d int64) int64 {
	if d > 0 && now > math.MaxInt64-d {
		return math.MaxInt64
	}
	return now + d
}
