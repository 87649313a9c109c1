// Package limits holds the state machine's limits on what a request may
// carry and its rules for queue names and messages. The state machine
// (package fsm) applies them to every command; the API and the Go client
// check the same rules (through transport/wire) before a request is
// proposed or sent, without depending on the state machine itself. It
// imports only the generated log types.
package limits

import (
	"fmt"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// The limits a request is checked against, by the API and again by Apply.
const (
	MaxVisibility    = 12 * time.Hour
	MaxDelay         = 12 * time.Hour // message delay and nack delay
	MaxQueueName     = 128
	MaxBatch         = 1000 // messages per Enqueue, receipts per Ack/Nack/Extend, Receive.max
	MaxBodyBytes     = 1 << 20
	MaxDedupID       = 128
	MaxAttributes    = 32
	MaxAttributeKey  = 256
	MaxAttributeVal  = 4096
	MaxTransactionOp = 100 // Ack and Enqueue groups per Transaction
	// MaxNackReason bounds the reason a nack (or a reject) gives: it is
	// kept on the message and carried into its dead letter.
	MaxNackReason = 1024
	// MaxPeek bounds the messages one peek returns. A peek is a read
	// served outside the log, each message may carry a 1 MiB body, and
	// the answer is built under the state machine's read lock, so it is
	// smaller than a batch.
	MaxPeek = 100
	// MaxConsumer bounds a receive's consumer name, which every message
	// it leases keeps while the lease runs.
	MaxConsumer = 128
	// MaxGroup bounds a message's group key, which the state machine
	// keeps in memory for every live message of the group.
	MaxGroup = 128
)

// ConsumerProblem returns what is wrong with a consumer name ("consumer
// is 129 bytes, limit is 128"), or "" when it is at most MaxConsumer bytes
// of UTF-8 without control characters: it is printed in tables and logs.
func ConsumerProblem(name string) string { return labelProblem("consumer", name, MaxConsumer) }

// GroupProblem returns what is wrong with a message's group key ("group
// is 129 bytes, limit is 128"), or "" when it is at most MaxGroup bytes of
// UTF-8 without control characters: like a consumer name, it is shown in
// tables and logs.
func GroupProblem(group string) string { return labelProblem("group", group, MaxGroup) }

func labelProblem(field, s string, limit int) string {
	if len(s) > limit {
		return fmt.Sprintf("%s is %d bytes, limit is %d", field, len(s), limit)
	}
	if !utf8.ValidString(s) {
		return field + " is not valid UTF-8"
	}
	for i, r := range s {
		if unicode.IsControl(r) {
			return fmt.Sprintf("%s has control byte %q at %d", field, r, i)
		}
	}
	return ""
}

// PeekProblem returns what is wrong with a peek's max and state filter
// ("max: 101, limit is 1 to 100"), or "" when max is within MaxPeek and
// state is a PeekState.
func PeekProblem(max int, state fsmpb.PeekState) string {
	if max < 1 || max > MaxPeek {
		return fmt.Sprintf("max: %d, limit is 1 to %d", max, MaxPeek)
	}
	if _, ok := fsmpb.PeekState_name[int32(state)]; !ok {
		return fmt.Sprintf("state: %d is not a peek state", state)
	}
	return ""
}

// QueueNameProblem returns what is wrong with a queue name, or "" when it
// is one: [A-Za-z0-9._-]{1,128}.
func QueueNameProblem(name string) string {
	if len(name) == 0 {
		return fmt.Sprintf("queue name is empty, want 1 to %d characters [A-Za-z0-9._-]", MaxQueueName)
	}
	if len(name) > MaxQueueName {
		return fmt.Sprintf("queue name %q has length %d, limit is 1 to %d characters [A-Za-z0-9._-]", name, len(name), MaxQueueName)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return fmt.Sprintf("queue name %q has byte %q at %d, allowed are [A-Za-z0-9._-]", name, c, i)
		}
	}
	return ""
}

// MessageProblem returns what is wrong with message m, starting with the
// field below the message ("body is 1048577 bytes, limit is 1048576"), or
// "" when m is within every limit. It allocates only for a problem: Apply
// checks every message on every node.
func MessageProblem(m *fsmpb.Message) string {
	if len(m.GetBody()) > MaxBodyBytes {
		return fmt.Sprintf("body is %d bytes, limit is %d", len(m.GetBody()), MaxBodyBytes)
	}
	if len(m.GetDedupId()) > MaxDedupID {
		return fmt.Sprintf("dedup_id is %d bytes, limit is %d", len(m.GetDedupId()), MaxDedupID)
	}
	if d := m.GetDelayNs(); d < 0 || d > int64(MaxDelay) {
		return fmt.Sprintf("delay_ns is %d, limit is 0 to %v", d, MaxDelay)
	}
	if g := m.GetGroup(); g != "" {
		if p := GroupProblem(g); p != "" {
			return p
		}
	}
	if len(m.GetAttributes()) > MaxAttributes {
		return fmt.Sprintf("attributes has %d entries, limit is %d", len(m.GetAttributes()), MaxAttributes)
	}
	for j, a := range m.GetAttributes() {
		if p := AttributeProblem(a.GetKey(), a.GetValue()); p != "" {
			return fmt.Sprintf("attributes[%d].%s", j, p)
		}
	}
	return ""
}

// AttributeProblem returns what is wrong with one attribute ("key is 0
// bytes, limit is 1 to 256"), or "": the rule for commands and for
// restored snapshots alike.
func AttributeProblem(key, value string) string {
	if len(key) == 0 || len(key) > MaxAttributeKey {
		return fmt.Sprintf("key is %d bytes, limit is 1 to %d", len(key), MaxAttributeKey)
	}
	if len(value) > MaxAttributeVal {
		return fmt.Sprintf("value is %d bytes, limit is %d", len(value), MaxAttributeVal)
	}
	return ""
}
