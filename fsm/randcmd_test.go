package fsm

import (
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/quorumq/quorumq/fsm/fsmpb"
)

// chooser makes the random choices of a command sequence: from math/rand
// for determinism tests, from the fuzzer's bytes for fuzz tests.
type chooser interface{ intn(n int) int }

type rngChooser struct{ r *rand.Rand }

func (c rngChooser) intn(n int) int { return c.r.IntN(n) }

// byteChooser reads choices from bytes; it reports done once they run out.
type byteChooser struct {
	b    []byte
	done bool
}

func (c *byteChooser) intn(n int) int {
	if len(c.b) == 0 {
		c.done = true
		return 0
	}
	v := int(c.b[0])
	c.b = c.b[1:]
	return v % n
}

var genQueues = []string{"a", "b", "c"}

// gen produces commands over a few queues with a small dedup-ID space and
// receipts it has seen (valid, stale and made up), so dedup hits, lease
// losses, redeliveries, dead letters and replays all happen often.
type gen struct {
	c        chooser
	now      int64
	receipts map[string][]*fsmpb.Receipt
}

func newGen(c chooser) *gen {
	return &gen{c: c, now: t0, receipts: make(map[string][]*fsmpb.Receipt)}
}

func (g *gen) queue() string { return genQueues[g.c.intn(len(genQueues))] }

func (g *gen) dur(max time.Duration) int64 {
	return int64(g.c.intn(int(max/time.Millisecond)+1)) * int64(time.Millisecond)
}

func (g *gen) msgs() []*fsmpb.Message {
	out := make([]*fsmpb.Message, 1+g.c.intn(4))
	for i := range out {
		m := &fsmpb.Message{Body: []byte(fmt.Sprintf("m%d", g.c.intn(1000)))}
		if g.c.intn(2) == 0 {
			m.DedupId = fmt.Sprintf("d%d", g.c.intn(20))
		}
		if g.c.intn(4) == 0 {
			m.DelayNs = g.dur(5 * time.Second)
		}
		if g.c.intn(8) == 0 {
			m.Attributes = []*fsmpb.Attribute{{Key: "k", Value: fmt.Sprint(g.c.intn(3))}}
		}
		if g.c.intn(3) == 0 {
			m.Group = fmt.Sprintf("g%d", g.c.intn(3))
		}
		out[i] = m
	}
	return out
}

func (g *gen) pick(queue string) []*fsmpb.Receipt {
	seen := g.receipts[queue]
	out := make([]*fsmpb.Receipt, 1+g.c.intn(3))
	for i := range out {
		switch {
		case len(seen) > 0 && g.c.intn(5) > 0:
			out[i] = seen[len(seen)-1-g.c.intn(min(len(seen), 8))]
		default:
			out[i] = &fsmpb.Receipt{MessageId: uint64(g.c.intn(30)), Attempt: uint32(1 + g.c.intn(3))}
		}
	}
	return out
}

func (g *gen) settings() *fsmpb.QueueSettings {
	s := &fsmpb.QueueSettings{}
	if g.c.intn(2) == 0 {
		s.MaxDeliveries = proto.Uint32(uint32(g.c.intn(4)))
	}
	if g.c.intn(2) == 0 {
		s.DeadLetterQueue = proto.String(g.queue())
	}
	if g.c.intn(2) == 0 {
		s.DedupWindowNs = proto.Int64(int64(time.Second) + g.dur(20*time.Second))
	}
	if g.c.intn(3) == 0 {
		s.RetentionNs = proto.Int64(int64(time.Second) + g.dur(30*time.Second))
	}
	if g.c.intn(3) == 0 {
		s.MaxDepth = proto.Uint64(uint64(g.c.intn(12)))
	}
	if g.c.intn(2) == 0 {
		s.VisibilityTimeoutNs = proto.Int64(int64(time.Second) + g.dur(5*time.Second))
	}
	return s
}

// next returns the next command. Time mostly moves forward by up to 3 s
// and sometimes jumps back, which the FSM must ignore.
func (g *gen) next() *fsmpb.Command {
	switch g.c.intn(10) {
	case 0:
		g.now -= g.dur(2 * time.Second)
	default:
		g.now += g.dur(3 * time.Second)
	}
	cmd := &fsmpb.Command{NowUnixNano: g.now, Rules: uint32(min(g.c.intn(8), Rules))}
	q := g.queue()
	switch g.c.intn(22) {
	case 0:
		cmd.Op = &fsmpb.Command_CreateQueue{CreateQueue: &fsmpb.CreateQueue{Name: q, Settings: g.settings(), IfNotExists: g.c.intn(2) == 0, CreateDeadLetterQueue: g.c.intn(2) == 0}}
	case 1:
		cmd.Op = &fsmpb.Command_UpdateQueue{UpdateQueue: &fsmpb.UpdateQueue{Name: q, Settings: g.settings(), CreateDeadLetterQueue: g.c.intn(2) == 0}}
	case 2:
		if g.c.intn(4) == 0 {
			cmd.Op = &fsmpb.Command_DeleteQueue{DeleteQueue: &fsmpb.DeleteQueue{Name: q, Force: g.c.intn(2) == 0}}
		} else {
			cmd.Op = &fsmpb.Command_Purge{Purge: &fsmpb.Purge{Queue: q}}
		}
	case 3, 4, 5, 6:
		cmd.Op = &fsmpb.Command_Enqueue{Enqueue: &fsmpb.Enqueue{Queue: q, Messages: g.msgs(), CreateQueue: g.c.intn(3) > 0}}
	case 7, 8, 9, 10:
		r := &fsmpb.Receive{Queue: q, Max: uint32(1 + g.c.intn(4)), AutoAck: g.c.intn(6) == 0, DeadLetterOrigin: g.c.intn(4) != 0}
		if g.c.intn(3) == 0 {
			r.VisibilityNs = int64(time.Second) + g.dur(4*time.Second)
		}
		if g.c.intn(3) == 0 {
			r.RequestId = fmt.Sprintf("r%d", g.c.intn(6))
		}
		if g.c.intn(4) == 0 {
			r.Ack = g.pick(q)
		}
		if g.c.intn(2) == 0 {
			r.Consumer = fmt.Sprintf("host-%d:%d", g.c.intn(2), g.c.intn(3))
		}
		cmd.Op = &fsmpb.Command_Receive{Receive: r}
	case 11, 12, 13:
		cmd.Op = &fsmpb.Command_Ack{Ack: &fsmpb.Ack{Queue: q, Receipts: g.pick(q)}}
	case 14:
		cmd.Op = &fsmpb.Command_Nack{Nack: &fsmpb.Nack{Queue: q, Receipts: g.pick(q), DelayNs: g.dur(3 * time.Second),
			Reason: []string{"", "timeout", "bad input"}[g.c.intn(3)]}}
	case 15:
		cmd.Op = &fsmpb.Command_Extend{Extend: &fsmpb.Extend{Queue: q, Receipts: g.pick(q), VisibilityNs: g.dur(5 * time.Second)}}
	case 16, 17:
		out := g.queue()
		cmd.Op = &fsmpb.Command_Transaction{Transaction: &fsmpb.Transaction{
			Acks:     []*fsmpb.Ack{{Queue: q, Receipts: g.pick(q)}},
			Enqueues: []*fsmpb.Enqueue{{Queue: out, Messages: g.msgs()}},
		}}
	case 20:
		cmd.Op = &fsmpb.Command_Reject{Reject: &fsmpb.Reject{Queue: q, Receipts: g.pick(q), Reason: []string{"", "poison"}[g.c.intn(2)]}}
	case 21:
		to := ""
		if g.c.intn(2) == 0 {
			to = g.queue()
		}
		cmd.Op = &fsmpb.Command_Redrive{Redrive: &fsmpb.Redrive{Queue: q, To: to, Max: uint32(1 + g.c.intn(3))}}
	default:
		cmd.Op = &fsmpb.Command_Tick{Tick: &fsmpb.Tick{}}
	}
	return cmd
}

// observe records the receipts a result handed out.
func (g *gen) observe(cmd *fsmpb.Command, res *fsmpb.Result) {
	if r := cmd.GetReceive(); r != nil {
		for _, d := range res.GetDeliveries() {
			g.receipts[r.Queue] = append(g.receipts[r.Queue], d.Receipt)
		}
	}
}

// fifoChecker checks that messages enqueued without delay are delivered
// for the first time in id order, per queue incarnation, and within it
// per group: the messages without a group in id order, and each group's.
type fifoChecker struct {
	zeroDelay map[string]map[uint64]bool
	// last: by queue and group, the id of the last first delivery.
	last map[[2]string]uint64
}

func newFIFOChecker() *fifoChecker {
	return &fifoChecker{zeroDelay: map[string]map[uint64]bool{}, last: map[[2]string]uint64{}}
}

func (c *fifoChecker) reset(q string) {
	c.zeroDelay[q] = map[uint64]bool{}
	for k := range c.last {
		if k[0] == q {
			delete(c.last, k)
		}
	}
}

func (c *fifoChecker) enqueued(e *fsmpb.Enqueue, res []*fsmpb.EnqueueResult) {
	if c.zeroDelay[e.Queue] == nil {
		c.reset(e.Queue)
	}
	for i, r := range res {
		if !r.Duplicate && e.Messages[i].DelayNs == 0 {
			c.zeroDelay[e.Queue][r.MessageId] = true
		}
	}
}

func (c *fifoChecker) check(t testing.TB, cmd *fsmpb.Command, res *fsmpb.Result) {
	t.Helper()
	if res.GetError() != nil {
		return
	}
	switch {
	case cmd.GetDeleteQueue() != nil:
		c.reset(cmd.GetDeleteQueue().Name)
	case cmd.GetEnqueue() != nil:
		c.enqueued(cmd.GetEnqueue(), res.Enqueued)
	case cmd.GetTransaction() != nil:
		n := 0
		for _, e := range cmd.GetTransaction().Enqueues {
			c.enqueued(e, res.Enqueued[n:n+len(e.Messages)])
			n += len(e.Messages)
		}
	case cmd.GetReceive() != nil && !res.Replayed:
		q := cmd.GetReceive().Queue
		for _, d := range res.Deliveries {
			id := d.Receipt.MessageId
			if d.Receipt.Attempt != 1 || !c.zeroDelay[q][id] {
				continue
			}
			k := [2]string{q, d.GetGroup()}
			if id <= c.last[k] {
				t.Fatalf("queue %s, group %q: message %d delivered first after message %d", q, d.GetGroup(), id, c.last[k])
			}
			c.last[k] = id
		}
	}
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x9e3779b97f4a7c15)) }
