package jepsen

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/quorumq/quorumq/client"
)

// Groups workload settings. The load is small (at most 20 sends a second
// in all; some 200 messages in a short case, a few dozen under lazyfs) so
// that it adds little to a case's time on two cores.
const (
	// groupVisibility is every receive's lease: a delivery left unacked
	// holds its group back this long.
	groupVisibility = 2 * time.Second
	// groupMaxDeliveries is the queue's max_deliveries: the next receive
	// dead-letters a message delivered this often and not settled.
	groupMaxDeliveries = 3
	// groupReceiveMax is how many messages one receive asks for; it gets
	// at most one per group.
	groupReceiveMax = 3
	// groupPace is how long a producer waits between two sends, each to
	// the next of its groups in turn.
	groupPace = 100 * time.Millisecond
	// groupRetryPause is how long a producer waits before it sends a
	// message whose send was not answered ok again.
	groupRetryPause = 200 * time.Millisecond
	// groupWork bounds the random time a consumer works on a message.
	groupWork = 20 * time.Millisecond
	// Poison messages, by their sequence number in their group modulo
	// groupPoison: groupRejected is rejected at its first delivery,
	// groupNackedToDeath nacked at every delivery until max_deliveries
	// dead-letters it. Both come early in a group, so that a slow case
	// (lazyfs, full disks) that sends a few messages per group has dead
	// letters of both kinds too.
	groupPoison        = 16
	groupRejected      = 2
	groupNackedToDeath = 5
	// Percent of the other deliveries, outside the drain, that are
	// nacked (given back at once or after up to groupNackDelay), and that
	// are left for their lease to run out.
	groupNackPct   = 4
	groupExpirePct = 3
	groupNackDelay = 100 * time.Millisecond
)

// groups drives a queue of message groups: strict order within a group,
// groups in parallel. Each of several producers owns groups of its own
// and sends each group's messages in order, the next only once a send of
// the previous one was answered ok (a send that failed or whose outcome
// is unknown is sent again with the same dedup ID, the value, until one
// is), so a group's order is its producers' send order. Two consumers
// receive (up to groupReceiveMax messages, one per group), work on each
// message for a random moment and ack it; some deliveries are nacked or
// left for their lease to run out, so that a group's head is delivered
// again, and poison messages are rejected or nacked until max_deliveries
// dead-letters them into the DLQ. Once the drain is over, the DLQ is read
// (a KindReadDLQ op), so that CheckGroups can tell dead letters from
// gaps. Every ack, nack and reject is one op naming its receipt.
type groups struct {
	queue, dlq         string
	producers, perProd int
	consumers          int
}

// newGroups returns the groups workload of every case: two producers with
// three groups each, two consumers.
func newGroups() *groups {
	return &groups{queue: "grp", dlq: "grp-dlq", producers: 2, perProd: 3, consumers: 2}
}

func (g *groups) Name() string     { return "groups" }
func (g *groups) Queues() []string { return []string{g.queue, g.dlq} }
func (g *groups) Specs() []QueueSpec {
	return []QueueSpec{{Workload: g.Name(), Mode: AtLeastOnce, Source: g.queue, Sink: g.queue, DLQ: g.dlq, Groups: true}}
}

// Setup creates the queue with its max_deliveries and its DLQ.
func (g *groups) Setup(ctx context.Context, c *client.Client) error {
	_, err := c.EnsureQueue(ctx, g.queue, client.QueueSettings{MaxDeliveries: groupMaxDeliveries, DeadLetterQueue: g.dlq}, client.WithCreateDLQ())
	return err
}

// group names group i of producer p; a message's value is its group's
// name and its sequence number in the group ("groups-p0-g1-17").
func (g *groups) group(p, i int) string { return fmt.Sprintf("%s-p%d-g%d", g.Name(), p, i) }

// seqOf is the sequence number in a value made by Run's producers.
func seqOf(value string) int {
	n, _ := strconv.Atoi(value[strings.LastIndexByte(value, '-')+1:])
	return n
}

func (g *groups) Run(main, drain context.Context, w *World, c *client.Client) {
	prodDone := startProducers(g.producers, func(p int) { g.produce(main, w, c, p) })
	var wg sync.WaitGroup
	for i := 0; i < g.consumers; i++ {
		name := fmt.Sprintf("%s-c%d", g.Name(), i)
		wg.Go(func() {
			consumeLoop(prodDone, drain, c, []string{g.queue}, func() int { return g.consume(w, c, name) })
		})
	}
	wg.Wait()
	<-prodDone
	g.readDLQ(w, c)
}

// produce is producer p: it sends the next message of each of its groups
// in turn until main ends.
func (g *groups) produce(main context.Context, w *World, c *client.Client, p int) {
	name := fmt.Sprintf("%s-p%d", g.Name(), p)
	next := make([]int, g.perProd)
	for i := 0; main.Err() == nil; i = (i + 1) % g.perProd {
		next[i]++
		key := g.group(p, i)
		v := fmt.Sprintf("%s-%d", key, next[i])
		g.sendInOrder(main, w, c, Op{Worker: name, Workload: g.Name(), Kind: KindSend, Queue: g.queue, Value: v,
			Producer: name, Group: key, Seq: next[i], DedupID: v})
		sleepCtx(main, groupPace)
	}
}

// sendInOrder sends op's message until an attempt is answered ok, so
// that the group's next message is sent only after it is in the queue.
// After main ends it stops, unless an attempt's outcome is unknown: then
// it tries up to three more times (the cluster is healed by then), so
// that the group's last message is known to be in or out when it can be.
func (g *groups) sendInOrder(main context.Context, w *World, c *client.Client, op Op) {
	send := func(ctx context.Context, op *Op) error {
		res, err := c.Send(ctx, op.Queue, []byte(op.Value), client.WithDedupID(op.DedupID), client.WithGroup(op.Group))
		op.MessageID, op.Duplicate = res.MessageID, res.Duplicate
		return err
	}
	unknown := false
	for main.Err() == nil {
		switch w.do(op, send).Status {
		case StatusOK:
			return
		case StatusUnknown:
			unknown = true
		}
		sleepCtx(main, groupRetryPause)
	}
	for try := 0; unknown && try < 3; try++ {
		if w.do(op, send).Status == StatusOK {
			return
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// consume is one consumer step: receive, then settle each message in
// turn, and return how many came.
func (g *groups) consume(w *World, c *client.Client, worker string) int {
	var ms []client.Message
	w.do(Op{Worker: worker, Workload: g.Name(), Kind: KindReceive, Queue: g.queue, Visibility: int64(groupVisibility)},
		receiveInto(c, &ms, groupReceiveMax, client.WithWait(500*time.Millisecond), client.WithVisibility(groupVisibility)))
	for _, m := range ms {
		time.Sleep(rand.N(groupWork))
		op := Op{Worker: worker, Workload: g.Name(), Queue: g.queue, Value: string(m.Body), MessageID: m.Receipt.MessageID, Attempt: m.Receipt.Attempt}
		seq := seqOf(op.Value)
		r := rand.IntN(100)
		switch {
		case seq%groupPoison == groupNackedToDeath:
			op.Kind = KindNack
			w.do(op, func(ctx context.Context, _ *Op) error { return c.Nack(ctx, g.queue, 0, m.Receipt) })
		case seq%groupPoison == groupRejected:
			op.Kind = KindReject
			w.do(op, func(ctx context.Context, _ *Op) error { return c.Reject(ctx, g.queue, "poison", m.Receipt) })
		case w.draining.Load() || r >= groupNackPct+groupExpirePct:
			op.Kind = KindAck
			w.do(op, func(ctx context.Context, _ *Op) error { return c.Ack(ctx, g.queue, m.Receipt) })
		case r < groupNackPct:
			op.Kind = KindNack
			delay := rand.N(groupNackDelay + 1)
			w.do(op, func(ctx context.Context, _ *Op) error { return c.Nack(ctx, g.queue, delay, m.Receipt) })
		default:
			// Left alone: the lease runs out and the message is its
			// group's next again.
		}
	}
	return len(ms)
}

// readDLQ records every dead letter in the DLQ as one KindReadDLQ op,
// read on the leader once the consumers are done. It tries for up to
// 20 s; a read that never succeeds is recorded with its error, and the
// checker then says the DLQ was not read.
func (g *groups) readDLQ(w *World, c *client.Client) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	op := Op{Worker: g.Name() + "-dlq", Workload: g.Name(), Kind: KindReadDLQ, Queue: g.dlq, Start: w.Rec.Since(), Drain: true}
	var ms []client.PeekedMessage
	var err error
	for {
		if ms, err = peekAll(ctx, c, g.dlq); err == nil || ctx.Err() != nil {
			break
		}
		sleepCtx(ctx, 500*time.Millisecond)
	}
	op.End, op.Status = w.Rec.Since(), Classify(err)
	if err != nil {
		op.Error = err.Error()
	}
	for _, m := range ms {
		d := Delivered{Value: string(m.Body), MessageID: m.ID, Attempt: m.Attempts, DedupID: m.DedupID, Group: m.Group}
		if m.DeadLetter != nil {
			d.DeadLetterOf = m.DeadLetter.SourceMessageID
		}
		op.Delivered = append(op.Delivered, d)
	}
	w.Rec.Record(op)
}
