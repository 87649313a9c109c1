package jepsen

import (
	"fmt"
	"sort"
	"strings"
	"time"
)

// Mode is the delivery guarantee a workload relies on; it decides which
// anomalies the total-queue checker tolerates.
type Mode string

const (
	// AtLeastOnce: nothing acknowledged may be lost; redelivery is allowed.
	AtLeastOnce Mode = "at-least-once"
	// ExactlyOnce: nothing lost, and no value enqueued twice in the sink
	// queue (redelivery of the same sink message to its consumer is the
	// consumer's at-least-once and is reported separately).
	ExactlyOnce Mode = "exactly-once"
	// AtMostOnce: no value delivered twice; loss is allowed (a receive
	// whose reply is lost loses its messages, by definition).
	AtMostOnce Mode = "at-most-once"
)

// QueueSpec says which part of a history one total-queue check reads.
type QueueSpec struct {
	Workload string
	Mode     Mode
	// Source is the queue producers send to.
	Source string
	// Sink is the queue whose deliveries count as "delivered": Source
	// itself, or the last queue of a pipeline.
	Sink string
	// Producer, if set, restricts the check to that producer's sends and
	// to the deliveries of its values ("<Producer>-<seq>"), so one
	// producer of a shared queue gets counts of its own.
	Producer string
	// DedupWindow is Source's dedup window; 0 is the server's default,
	// which every workload queue has.
	DedupWindow time.Duration
	// DLQ is Source's dead-letter queue, read once at the end of the run
	// (a KindReadDLQ op): a value found there came out of Source as a dead
	// letter, so it is not lost. "" when Source has none.
	DLQ string
	// Groups adds the message-group check (CheckGroups) to the result.
	Groups bool
}

// defaultDedupWindow is the server's default dedup window (fsm).
const defaultDedupWindow = 10 * time.Minute

// timingSlack is how much earlier than the harness's clock says a lease
// may end or a dedup entry be forgotten: 1 s for the clocks' disagreement
// and one tick (the server's TickInterval, 1 s) for expiries applied by
// the next command.
const timingSlack = 2 * time.Second

// QueueResult is the outcome of a total-queue check. Counts are of distinct
// values (one value = one message a producer meant to send).
type QueueResult struct {
	Workload string `json:"workload"`
	Mode     Mode   `json:"mode"`
	Source   string `json:"source"`
	Sink     string `json:"sink"`
	Producer string `json:"producer,omitempty"`

	Attempted int `json:"attempted"`
	OK        int `json:"ok"`
	Failed    int `json:"failed"`
	Unknown   int `json:"unknown"`
	Delivered int `json:"delivered"`

	// Lost: acknowledged sends never delivered.
	Lost int `json:"lost"`
	// Unexpected: delivered values never sent, or whose send definitely
	// failed.
	Unexpected int `json:"unexpected"`
	// Duplicated: values delivered more than once (at-least-once,
	// at-most-once), or enqueued into the sink more than once
	// (exactly-once).
	Duplicated int `json:"duplicated"`
	// Redelivered: sink messages delivered again after a lease ran out.
	Redelivered int `json:"redelivered"`
	// Recovered: sends with an unknown outcome that were delivered.
	Recovered int `json:"recovered"`
	// DoubleEnqueued: values that got two message IDs in one queue
	// although every send carried a dedup ID.
	DoubleEnqueued int `json:"double_enqueued"`
	// OrderViolations: pairs of one producer's consecutive messages whose
	// message IDs do not increase with the producer's sequence.
	OrderViolations int `json:"order_violations"`
	// EarlyRedeliveries: deliveries of a message again while, by the
	// harness's clock, the lease of its previous delivery had more than
	// timingSlack to run.
	EarlyRedeliveries int `json:"early_redeliveries"`
	// DedupWindowViolations: acknowledged sends of a value that got a
	// message ID other than an earlier acknowledged send of it, although
	// they came inside its dedup window (less timingSlack).
	DedupWindowViolations int `json:"dedup_window_violations"`

	Valid    bool     `json:"valid"`
	Problems []string `json:"problems,omitempty"`

	LostValues       []string `json:"lost_values,omitempty"`
	UnexpectedValues []string `json:"unexpected_values,omitempty"`
	DuplicatedValues []string `json:"duplicated_values,omitempty"`
	DoubleEnqValues  []string `json:"double_enqueued_values,omitempty"`
	OrderExamples    []string `json:"order_examples,omitempty"`
	EarlyExamples    []string `json:"early_redelivery_examples,omitempty"`
	DedupExamples    []string `json:"dedup_window_examples,omitempty"`

	// Groups is the message-group check, for a spec with Groups.
	Groups *GroupResult `json:"groups,omitempty"`
}

// maxExamples bounds the value lists in a result so results.json stays
// readable after a bad run.
const maxExamples = 20

type sendInfo struct {
	status   Status
	producer string
	group    string
	seq      int
	msgIDs   map[uint64]bool // IDs the source queue gave this value
}

// CheckQueue runs the total-queue checker for one workload over a history.
func CheckQueue(ops []Op, spec QueueSpec) QueueResult {
	res := QueueResult{Workload: spec.Workload, Mode: spec.Mode, Source: spec.Source, Sink: spec.Sink, Producer: spec.Producer}
	// mine tells whether a value belongs to the check (every value, or
	// the named producer's).
	mine := func(v string) bool { return spec.Producer == "" || strings.HasPrefix(v, spec.Producer+"-") }
	sends := map[string]*sendInfo{}
	var order []string
	sinkDeliveries := map[string][]Delivered{}
	for _, o := range ops {
		if o.Workload != spec.Workload {
			continue
		}
		switch {
		case isSend(o.Kind) && o.Queue == spec.Source && (spec.Producer == "" || o.Producer == spec.Producer):
			s := sends[o.Value]
			if s == nil {
				s = &sendInfo{status: StatusFail, producer: o.Producer, group: o.Group, seq: o.Seq, msgIDs: map[uint64]bool{}}
				sends[o.Value] = s
				order = append(order, o.Value)
			}
			s.status = mergeStatus(s.status, o.Status)
			if o.Status == StatusOK {
				s.msgIDs[o.MessageID] = true
			}
		case isReceive(o.Kind) && o.Status == StatusOK:
			if o.Queue == spec.Sink {
				for _, d := range o.Delivered {
					if mine(d.Value) {
						sinkDeliveries[d.Value] = append(sinkDeliveries[d.Value], d)
					}
				}
			}
		}
	}
	// A delivery may be recorded before the send that produced it returns
	// (the send's reply was slow), so source message IDs are attributed in
	// a second pass, once every send is known.
	for _, o := range ops {
		if o.Workload != spec.Workload || !isReceive(o.Kind) || o.Status != StatusOK || o.Queue != spec.Source {
			continue
		}
		for _, d := range o.Delivered {
			if s := sends[d.Value]; s != nil {
				s.msgIDs[d.MessageID] = true
			}
		}
	}
	// Dead letters name the message they were in Source.
	deadLettered := map[string]bool{}
	if dlq := lastDLQRead(ops, spec); dlq != nil {
		for _, d := range dlq.Delivered {
			if !mine(d.Value) {
				continue
			}
			deadLettered[d.Value] = true
			if s := sends[d.Value]; s != nil && d.DeadLetterOf != 0 {
				s.msgIDs[d.DeadLetterOf] = true
			}
		}
	}

	res.Attempted = len(sends)
	for _, v := range order {
		s := sends[v]
		switch s.status {
		case StatusOK:
			res.OK++
		case StatusFail:
			res.Failed++
		default:
			res.Unknown++
		}
		_, delivered := sinkDeliveries[v]
		delivered = delivered || deadLettered[v]
		switch {
		case s.status == StatusOK && !delivered:
			res.Lost++
			res.LostValues = appendExample(res.LostValues, v)
		case s.status == StatusUnknown && delivered:
			res.Recovered++
		}
		if len(s.msgIDs) > 1 {
			res.DoubleEnqueued++
			res.DoubleEnqValues = appendExample(res.DoubleEnqValues, fmt.Sprintf("%s: message IDs %v", v, sortedIDs(s.msgIDs)))
		}
	}

	values := make([]string, 0, len(sinkDeliveries))
	for v := range sinkDeliveries {
		values = append(values, v)
	}
	sort.Strings(values)
	deadValues := make([]string, 0, len(deadLettered))
	for v := range deadLettered {
		deadValues = append(deadValues, v)
	}
	sort.Strings(deadValues)
	for _, v := range deadValues {
		if _, delivered := sinkDeliveries[v]; delivered {
			continue // judged with the deliveries below
		}
		if s := sends[v]; s == nil || s.status == StatusFail {
			res.Unexpected++
			res.UnexpectedValues = appendExample(res.UnexpectedValues, v+" (dead letter, "+unsentWhy(s)+")")
		}
	}
	for _, v := range values {
		ds := sinkDeliveries[v]
		res.Delivered++
		if s := sends[v]; s == nil || s.status == StatusFail {
			res.Unexpected++
			res.UnexpectedValues = appendExample(res.UnexpectedValues, v+" ("+unsentWhy(s)+")")
		}
		ids := map[uint64]bool{}
		for _, d := range ds {
			ids[d.MessageID] = true
		}
		res.Redelivered += len(ds) - len(ids)
		dup := len(ds) > 1
		if spec.Mode == ExactlyOnce {
			dup = len(ids) > 1
			if spec.Sink != spec.Source && len(ids) > 1 {
				res.DoubleEnqueued++
				res.DoubleEnqValues = appendExample(res.DoubleEnqValues, fmt.Sprintf("%s in %s: message IDs %v", v, spec.Sink, sortedIDs(ids)))
			}
		}
		if dup {
			res.Duplicated++
			res.DuplicatedValues = appendExample(res.DuplicatedValues, fmt.Sprintf("%s x%d (message IDs %v)", v, len(ds), sortedIDs(ids)))
		}
	}

	res.OrderViolations, res.OrderExamples = checkProducerOrder(sends)
	res.EarlyRedeliveries, res.EarlyExamples = checkLeaseTimes(ops, spec, mine)
	window := spec.DedupWindow
	if window == 0 {
		window = defaultDedupWindow
	}
	res.DedupWindowViolations, res.DedupExamples = checkDedupWindow(ops, spec, window)
	if spec.Groups {
		g := CheckGroups(ops, spec)
		res.Groups = &g
	}

	if res.Unexpected > 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("%d unexpected values", res.Unexpected))
	}
	if res.DoubleEnqueued > 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("%d values enqueued twice despite a dedup ID", res.DoubleEnqueued))
	}
	if res.EarlyRedeliveries > 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("%d messages delivered again more than %v before their lease ended", res.EarlyRedeliveries, timingSlack))
	}
	if res.DedupWindowViolations > 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("%d sends inside their dedup window enqueued again", res.DedupWindowViolations))
	}
	if res.OrderViolations > 0 {
		res.Problems = append(res.Problems, fmt.Sprintf("%d per-producer order violations", res.OrderViolations))
	}
	if res.Lost > 0 && spec.Mode != AtMostOnce {
		res.Problems = append(res.Problems, fmt.Sprintf("%d acknowledged values lost", res.Lost))
	}
	if res.Duplicated > 0 && spec.Mode != AtLeastOnce {
		res.Problems = append(res.Problems, fmt.Sprintf("%d values duplicated", res.Duplicated))
	}
	if res.Groups != nil {
		res.Problems = append(res.Problems, res.Groups.Problems...)
	}
	res.Valid = len(res.Problems) == 0
	return res
}

// checkProducerOrder checks that each producer's messages got increasing
// message IDs in its own send order (Seq), and message IDs increase in
// enqueue order. A producer's messages of one group are a sequence of
// their own (Seq counts them), checked apart from its other groups. A
// synchronous producer sends one at a time, so a later send is enqueued
// later. The pipelined producer has many sends in flight,
// and Seq is the order of its SendAsync calls, which the client promises
// to keep through resends, leader changes and crashes: a batch that
// finally fails may leave a gap (its values absent, or with an unknown
// outcome and never delivered), but every value that did get into the
// queue, acknowledged or delivered after an unknown outcome, must sit
// behind the ones sent before it. A send answered Duplicate carries the
// message ID of the first enqueue of its dedup ID; every send of a value
// has the value as dedup ID and the value's first Seq, so that ID is the
// value's own message and stands at the value's place: a duplicate answer
// is checked like any other, with no allowance.
func checkProducerOrder(sends map[string]*sendInfo) (int, []string) {
	type item struct {
		seq   int
		value string
		id    uint64
	}
	byProducer := map[string][]item{}
	for v, s := range sends {
		if s.producer == "" || len(s.msgIDs) != 1 {
			continue // unknown position, or already reported as double-enqueued
		}
		p := s.producer
		if s.group != "" {
			p += " group " + s.group
		}
		for id := range s.msgIDs {
			byProducer[p] = append(byProducer[p], item{s.seq, v, id})
		}
	}
	producers := make([]string, 0, len(byProducer))
	for p := range byProducer {
		producers = append(producers, p)
	}
	sort.Strings(producers)
	var n int
	var ex []string
	for _, p := range producers {
		items := byProducer[p]
		sort.Slice(items, func(i, j int) bool { return items[i].seq < items[j].seq })
		for i := 1; i < len(items); i++ {
			if items[i].id <= items[i-1].id {
				n++
				ex = appendExample(ex, fmt.Sprintf("%s: %s (seq %d) got message ID %d after %s (seq %d) got %d",
					p, items[i].value, items[i].seq, items[i].id, items[i-1].value, items[i-1].seq, items[i-1].id))
			}
		}
	}
	return n, ex
}

// label names the checked queue in the summary tables: the sink, and for a
// check of one producer its name without the workload's prefix
// ("alo/pipe").
func (q QueueResult) label() string {
	if q.Producer == "" {
		return q.Sink
	}
	return q.Sink + "/" + strings.TrimPrefix(q.Producer, q.Workload+"-")
}

// byProducer is " by <producer>" for a check of one producer, else "".
func (q QueueResult) byProducer() string {
	if q.Producer == "" {
		return ""
	}
	return " by " + q.Producer
}

// unsentWhy says why a value that came out was not expected: s is its
// send, nil when there was none.
func unsentWhy(s *sendInfo) string {
	if s == nil {
		return "never sent"
	}
	return "send failed"
}

// lastDLQRead returns the spec's last successful read of its DLQ, or nil.
func lastDLQRead(ops []Op, spec QueueSpec) *Op {
	var last *Op
	for i := range ops {
		o := &ops[i]
		if spec.DLQ != "" && o.Workload == spec.Workload && o.Kind == KindReadDLQ && o.Queue == spec.DLQ && o.Status == StatusOK {
			last = o
		}
	}
	return last
}

func isSend(kind string) bool    { return kind == KindSend || kind == KindEnqueue }
func isReceive(kind string) bool { return kind == KindReceive || kind == KindDequeue }

// mergeStatus combines the outcomes of several attempts at one send: any ok
// makes it ok; otherwise any unknown makes it unknown.
func mergeStatus(a, b Status) Status {
	if a == StatusOK || b == StatusOK {
		return StatusOK
	}
	if a == StatusUnknown || b == StatusUnknown {
		return StatusUnknown
	}
	return StatusFail
}

func appendExample(list []string, s string) []string {
	if len(list) >= maxExamples {
		return list
	}
	return append(list, s)
}

func sortedIDs(m map[uint64]bool) []uint64 {
	out := make([]uint64, 0, len(m))
	for id := range m {
		out = append(out, id)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// checkLeaseTimes checks every redelivery in the spec's queues: attempt
// k+1 of a message must not come before the lease of attempt k ends, by
// the harness's clock, less timingSlack. The lease of attempt k was taken
// during the receive that delivered it, so it ends no earlier than that
// receive's start plus its visibility; the redelivery happened before its
// receive ended. A pair is checked only when both receives are known (an
// unknown receive's deliveries are not recorded), and not when attempt k
// was nacked (a nack op of its receipt that did not fail): a nack ends
// the lease early. No workload extends a lease.
func checkLeaseTimes(ops []Op, spec QueueSpec, mine func(string) bool) (int, []string) {
	type key struct {
		queue   string
		id      uint64
		attempt uint32
	}
	type lease struct {
		start, end, vis int64 // the receive's start and end, its visibility
		value           string
	}
	leases := map[key]lease{}
	nacked := map[key]bool{}
	for _, o := range ops {
		if o.Workload == spec.Workload && o.Kind == KindNack && o.Status != StatusFail {
			nacked[key{o.Queue, o.MessageID, o.Attempt}] = true
		}
		if o.Workload != spec.Workload || !isReceive(o.Kind) || o.Status != StatusOK || (o.Queue != spec.Source && o.Queue != spec.Sink) {
			continue
		}
		for _, d := range o.Delivered {
			if !mine(d.Value) {
				continue
			}
			k := key{o.Queue, d.MessageID, d.Attempt}
			if l, ok := leases[k]; !ok || o.Start < l.start {
				leases[k] = lease{start: o.Start, end: o.End, vis: o.Visibility, value: d.Value}
			}
		}
	}
	keys := make([]key, 0, len(leases))
	for k := range leases {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.queue != b.queue {
			return a.queue < b.queue
		}
		if a.id != b.id {
			return a.id < b.id
		}
		return a.attempt < b.attempt
	})
	var n int
	var ex []string
	for _, k := range keys {
		prev, ok := leases[key{k.queue, k.id, k.attempt - 1}]
		if k.attempt < 2 || !ok || prev.vis == 0 || nacked[key{k.queue, k.id, k.attempt - 1}] {
			continue
		}
		again := leases[k]
		if ends := prev.start + prev.vis; again.end < ends-int64(timingSlack) {
			n++
			ex = appendExample(ex, fmt.Sprintf("%s message %d (%s): attempt %d delivered by %.3f s, but attempt %d was leased for %v at %.3f s at the earliest (lease end %.3f s)",
				k.queue, k.id, again.value, k.attempt, sec(again.end), k.attempt-1, time.Duration(prev.vis), sec(prev.start), sec(ends)))
		}
	}
	return n, ex
}

// checkDedupWindow checks that acknowledged sends of one value inside its
// dedup window got one message ID: a later send (ended by the earlier
// one's start plus the window, less timingSlack) with another ID was
// enqueued twice.
func checkDedupWindow(ops []Op, spec QueueSpec, window time.Duration) (int, []string) {
	byValue := map[string][]Op{}
	var values []string
	for _, o := range ops {
		if o.Workload != spec.Workload || !isSend(o.Kind) || o.Queue != spec.Source || o.Status != StatusOK || o.DedupID == "" ||
			(spec.Producer != "" && o.Producer != spec.Producer) {
			continue
		}
		if _, ok := byValue[o.Value]; !ok {
			values = append(values, o.Value)
		}
		byValue[o.Value] = append(byValue[o.Value], o)
	}
	sort.Strings(values)
	var n int
	var ex []string
	for _, v := range values {
		sends := byValue[v]
		sort.Slice(sends, func(i, j int) bool { return sends[i].Start < sends[j].Start })
		for j := 1; j < len(sends); j++ {
			for i := 0; i < j; i++ {
				a, b := sends[i], sends[j]
				if a.MessageID != b.MessageID && b.End <= a.Start+int64(window-timingSlack) {
					n++
					ex = appendExample(ex, fmt.Sprintf("%s: sent at %.3f s as message %d, again at %.3f s (inside the %v window) as message %d",
						v, sec(a.Start), a.MessageID, sec(b.Start), window, b.MessageID))
					break
				}
			}
		}
	}
	return n, ex
}

func sec(ns int64) float64 { return float64(ns) / 1e9 }
