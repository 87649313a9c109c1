package jepsen

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// GroupResult is what CheckGroups found in one queue's message groups.
// Counts of messages are of distinct values.
type GroupResult struct {
	Groups int `json:"groups"`
	// Messages: known to have been enqueued (sent ok, delivered or
	// dead-lettered). Acked: with an ack answered ok. DeadLettered: found
	// in the DLQ at the end.
	Messages     int `json:"messages"`
	Acked        int `json:"acked"`
	DeadLettered int `json:"dead_lettered"`
	// DLQRead: the spec's DLQ was read at the end (true without a DLQ).
	DLQRead bool `json:"dlq_read"`

	// SameReceive: receives that returned two messages of one group.
	SameReceive int `json:"same_receive"`
	// EarlyDeliveries: deliveries of a message whose receive ended before
	// an earlier message of its group could have been settled.
	EarlyDeliveries int `json:"early_deliveries"`
	// AckOrder: messages whose ack or reject was answered ok before an
	// earlier message of the group could have been settled.
	AckOrder int `json:"ack_order"`
	// Gaps: messages known to have been enqueued that were neither acked
	// nor found in the DLQ.
	Gaps int `json:"gaps"`
	// Duplicates: messages settled or delivered again beyond what
	// at-least-once allows (CheckGroups says what that is).
	Duplicates int `json:"duplicates"`
	// WrongGroup: deliveries that named a group other than their send's.
	WrongGroup int `json:"wrong_group"`

	Valid    bool     `json:"valid"`
	Problems []string `json:"problems,omitempty"`

	SameReceiveExamples []string `json:"same_receive_examples,omitempty"`
	EarlyExamples       []string `json:"early_delivery_examples,omitempty"`
	AckOrderExamples    []string `json:"ack_order_examples,omitempty"`
	GapExamples         []string `json:"gap_examples,omitempty"`
	DuplicateExamples   []string `json:"duplicate_examples,omitempty"`
	WrongGroupExamples  []string `json:"wrong_group_examples,omitempty"`
}

// groupMsg is what the history says about one message of a group.
type groupMsg struct {
	value, group string
	seq          int
	sent         Status // merged over every send of the value
	deliveries   []groupDelivery
	// settleStarts are the starts of the acks and rejects of the message
	// that did not fail: one of them, or a dead-lettering, settled it.
	settleStarts []int64
	acking       bool // an ack that did not fail
	acked        bool // an ack answered ok
	rejected     bool // a reject answered ok
	// okEnd is the earliest end of an ack or reject answered ok (0: none);
	// okAttempts the attempts whose receipts they settled.
	okEnd      int64
	okAttempts map[uint32]bool
	dead       int // times found in the DLQ
}

type groupDelivery struct {
	attempt    uint32
	start, end int64 // of the receive
}

// exists reports whether the message is known to have been enqueued.
func (m *groupMsg) exists() bool {
	return m.sent == StatusOK || len(m.deliveries) > 0 || m.dead > 0 || m.acked || m.rejected
}

// settledEvidence reports whether the history shows the message settled:
// an ack that did not fail (an unknown ack that did not take effect
// would have left the message to be delivered and acked again, since the
// drain empties the queue), or a dead letter in the DLQ.
func (m *groupMsg) settledEvidence() bool { return m.acking || m.dead > 0 }

// settledAfter is the earliest instant at which the message can have been
// settled: after every delivery of it (the latest start of a receive that
// delivered it), and no earlier than the earliest start of an ack or
// reject of it that did not fail, unless it is in the DLQ: dead-lettering
// by max_deliveries happens inside a later receive that the history
// cannot name, so only the deliveries bound it then.
func (m *groupMsg) settledAfter() int64 {
	lb := int64(math.MaxInt64)
	for _, s := range m.settleStarts {
		lb = min(lb, s)
	}
	if m.dead > 0 || lb == math.MaxInt64 {
		lb = 0
	}
	for _, d := range m.deliveries {
		lb = max(lb, d.start)
	}
	return lb
}

// CheckGroups checks the message-group contract of spec.Source over a
// history of the groups workload. Its producers send each group's
// messages one at a time, the next only once an attempt at the previous
// one was answered ok (retries keep the dedup ID), so a group's order is
// its send order, Seq; CheckQueue's order rule checks that message IDs
// rise with it. The server promises that a message of a group is
// delivered only when every earlier message of the group is settled —
// acked, rejected or dead-lettered — and that a nack or an expired lease
// makes the same message the group's next again.
//
// Every operation takes effect at one instant between its start and its
// end, both recorded; one whose outcome is unknown takes effect at some
// instant after its start, or never. So the history bounds when a message
// m was settled: no earlier than settledAfter(m) (after every delivery of
// m, and after the start of some ack or reject of m that did not fail,
// unless m is in the DLQ), and, if an ack or reject of m was answered ok,
// no later than settledBy(m), the earliest end of one. For messages j < k
// of one group (j a message with evidence of settlement, see rule 4), the
// checker requires:
//
//  1. Delivery order: every receive that delivered k (any attempt) ended
//     after settledAfter(j). A delivery of k that ended earlier was made
//     while j was still live, or before one of j's own deliveries. A lease
//     begins with its delivery and ends at the latest with its message's
//     settlement, so this is what the client can see of "no two messages
//     of one group leased at once". When a lease ran out by cluster time
//     it cannot see: a redelivery of the same message after its lease
//     ended is allowed here (CheckQueue's early-redelivery rule bounds
//     it), and so is a delivery of k that overlaps an ack of j whose
//     outcome is unknown.
//  2. Ack order: settledBy(k) is not before settledAfter(j): in the order
//     acks answered ok took effect, a group's messages are acked in its
//     order. Acks whose intervals overlap cannot be ordered by the client
//     and pass; an ack with an unknown outcome orders nothing, but it can
//     be the settlement, so it lowers settledAfter.
//  3. Same receive: no receive returns two messages of one group.
//  4. No gaps: every message known to have been enqueued (sent ok,
//     delivered, or dead-lettered) was acked (an ack that did not fail)
//     or is in the DLQ (spec.DLQ, read once at the end); a message whose
//     reject was answered ok must be in the DLQ. A gap takes no part in
//     rules 1 and 2, so one loss is reported once, not again as an order
//     violation of every later message of its group.
//  5. No duplicates beyond at-least-once. At-least-once lets a message be
//     delivered again while it is not settled (its lease ran out, or it
//     was nacked), and lets the settlement of one receipt be answered ok
//     more than once (a retried ack finds its own tombstone). A message
//     is a duplicate when acks or rejects of two different attempts of it
//     were answered ok, when a receive that started after an ok ack or
//     reject of it had returned delivered it again, when it was acked ok
//     and is in the DLQ as well, or when the DLQ holds it twice. (A value
//     enqueued as two messages is CheckQueue's 2×enq.)
//  6. A delivery that names a group names the one its message was sent
//     with.
//
// Sends are the spec's workload's sends to Source that carry a group;
// deliveries and settlements of values that were never sent are
// CheckQueue's unexpected values and are left out here.
func CheckGroups(ops []Op, spec QueueSpec) GroupResult {
	res := GroupResult{DLQRead: true}
	msgs := map[string]*groupMsg{}
	for _, o := range ops {
		if o.Workload != spec.Workload || !isSend(o.Kind) || o.Queue != spec.Source || o.Group == "" {
			continue
		}
		m := msgs[o.Value]
		if m == nil {
			m = &groupMsg{value: o.Value, group: o.Group, seq: o.Seq, sent: StatusFail, okAttempts: map[uint32]bool{}}
			msgs[o.Value] = m
		}
		m.sent = mergeStatus(m.sent, o.Status)
	}
	for _, o := range ops {
		if o.Workload != spec.Workload || o.Queue != spec.Source {
			continue
		}
		switch {
		case isReceive(o.Kind) && o.Status == StatusOK:
			seen := map[string]string{}
			for _, d := range o.Delivered {
				m := msgs[d.Value]
				if m == nil {
					continue
				}
				m.deliveries = append(m.deliveries, groupDelivery{attempt: d.Attempt, start: o.Start, end: o.End})
				if d.Group != "" && d.Group != m.group {
					res.WrongGroup++
					res.WrongGroupExamples = appendExample(res.WrongGroupExamples, fmt.Sprintf("%s sent with group %q delivered with group %q at %.3f s", d.Value, m.group, d.Group, sec(o.End)))
				}
				if other, ok := seen[m.group]; ok {
					res.SameReceive++
					res.SameReceiveExamples = appendExample(res.SameReceiveExamples, fmt.Sprintf("group %s: one receive (%.3f–%.3f s, %s) returned %s and %s", m.group, sec(o.Start), sec(o.End), o.Worker, other, d.Value))
				}
				seen[m.group] = d.Value
			}
		case o.Kind == KindAck || o.Kind == KindReject:
			m := msgs[o.Value]
			if m == nil || o.Status == StatusFail {
				continue
			}
			m.settleStarts = append(m.settleStarts, o.Start)
			m.acking = m.acking || o.Kind == KindAck
			if o.Status != StatusOK {
				continue
			}
			m.acked = m.acked || o.Kind == KindAck
			m.rejected = m.rejected || o.Kind == KindReject
			if m.okEnd == 0 || o.End < m.okEnd {
				m.okEnd = o.End
			}
			m.okAttempts[o.Attempt] = true
		}
	}
	if spec.DLQ != "" {
		dlq := lastDLQRead(ops, spec)
		res.DLQRead = dlq != nil
		if dlq != nil {
			for _, d := range dlq.Delivered {
				if m := msgs[d.Value]; m != nil {
					m.dead++
				}
			}
		}
	}

	byGroup := map[string][]*groupMsg{}
	for _, m := range msgs {
		if m.exists() {
			byGroup[m.group] = append(byGroup[m.group], m)
		}
	}
	groups := make([]string, 0, len(byGroup))
	for g := range byGroup {
		groups = append(groups, g)
	}
	sort.Strings(groups)
	res.Groups = len(groups)
	for _, g := range groups {
		ms := byGroup[g]
		sort.Slice(ms, func(i, j int) bool { return ms[i].seq < ms[j].seq })
		// bound is the latest settledAfter of the group's earlier
		// messages, and which message it is.
		var bound int64
		var boundBy *groupMsg
		for _, m := range ms {
			res.Messages++
			if m.acked {
				res.Acked++
			}
			if m.dead > 0 {
				res.DeadLettered++
			}
			if boundBy != nil {
				for _, d := range m.deliveries {
					if d.end < bound {
						res.EarlyDeliveries++
						res.EarlyExamples = appendExample(res.EarlyExamples, fmt.Sprintf("group %s: %s (attempt %d) delivered by %.3f s, but %s was settled no earlier than %.3f s",
							g, m.value, d.attempt, sec(d.end), boundBy.value, sec(bound)))
					}
				}
				if m.okEnd != 0 && m.okEnd < bound {
					res.AckOrder++
					res.AckOrderExamples = appendExample(res.AckOrderExamples, fmt.Sprintf("group %s: %s settled ok by %.3f s, but the earlier %s was settled no earlier than %.3f s",
						g, m.value, sec(m.okEnd), boundBy.value, sec(bound)))
				}
			}
			switch {
			case m.rejected && m.dead == 0:
				res.Gaps++
				res.GapExamples = appendExample(res.GapExamples, fmt.Sprintf("group %s: %s rejected ok, not in the DLQ", g, m.value))
			case !m.settledEvidence():
				res.Gaps++
				res.GapExamples = appendExample(res.GapExamples, fmt.Sprintf("group %s: %s (send %s, delivered %d times) neither acked nor in the DLQ", g, m.value, m.sent, len(m.deliveries)))
			default:
				if lb := m.settledAfter(); boundBy == nil || lb > bound {
					bound, boundBy = lb, m
				}
			}
			if why := m.duplicate(); why != "" {
				res.Duplicates++
				res.DuplicateExamples = appendExample(res.DuplicateExamples, fmt.Sprintf("group %s: %s %s", g, m.value, why))
			}
		}
	}

	add := func(n int, what string) {
		if n > 0 {
			res.Problems = append(res.Problems, fmt.Sprintf("%d %s", n, what))
		}
	}
	add(res.SameReceive, "receives returned two messages of one group")
	add(res.EarlyDeliveries, "deliveries before an earlier message of their group was settled")
	add(res.AckOrder, "messages acked before an earlier message of their group was settled")
	add(res.Gaps, "messages of a group neither acked nor dead-lettered")
	add(res.Duplicates, "messages of a group acked or delivered again after their settlement")
	add(res.WrongGroup, "deliveries with a group other than their send's")
	if !res.DLQRead {
		res.Problems = append(res.Problems, fmt.Sprintf("dead-letter queue %s not read at the end: dead letters cannot be told from gaps", spec.DLQ))
	}
	res.Valid = len(res.Problems) == 0
	return res
}

// duplicate says how the message was settled or delivered beyond what
// at-least-once allows, or "" (rule 5 of CheckGroups).
func (m *groupMsg) duplicate() string {
	var why []string
	if len(m.okAttempts) > 1 {
		attempts := make([]int, 0, len(m.okAttempts))
		for a := range m.okAttempts {
			attempts = append(attempts, int(a))
		}
		sort.Ints(attempts)
		why = append(why, fmt.Sprintf("settled ok at attempts %v", attempts))
	}
	if m.okEnd != 0 {
		for _, d := range m.deliveries {
			if d.start > m.okEnd {
				why = append(why, fmt.Sprintf("delivered again (attempt %d) by a receive that started at %.3f s, after its settlement returned ok at %.3f s", d.attempt, sec(d.start), sec(m.okEnd)))
				break
			}
		}
	}
	if m.acked && m.dead > 0 {
		why = append(why, "acked ok and in the DLQ")
	}
	if m.dead > 1 {
		why = append(why, fmt.Sprintf("in the DLQ %d times", m.dead))
	}
	return strings.Join(why, "; ")
}
