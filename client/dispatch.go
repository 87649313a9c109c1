package client

import (
	"context"
	"sync"
)

// pending is a delivery Consume holds: the message and the context its
// handler runs with, which ends when the lease is lost or the consumer
// stops.
type pending struct {
	m   *Message
	ctx context.Context
}

// dispatcher runs Consume's deliveries: at most n handlers at a time, and
// the deliveries of one message group one after another, in the order
// they arrived. The cluster hands out one message of a group at a time,
// the next only once the one before is settled, but it hands a message
// out again when its lease ran out, possibly while its first handler
// still runs here (the process stalled, or the handler ignores its
// context); a server that does not order groups hands out several at
// once. Either way the handlers of a group never overlap within one
// Consume.
//
// A delivery whose group has a handler running waits in the group's
// queue, and the goroutine running the group runs it when the handler
// before it returns. A waiting delivery holds no handler slot, so other
// groups and messages without a group keep running. At most n
// deliveries wait: since any delivery may have to wait, reserve asks
// for no more than both a free slot and room to wait allow. A group is
// forgotten as soon as nothing of it runs or waits.
type dispatcher struct {
	run func(pending)
	// slots holds a token per running handler, room one per waiting
	// delivery. reserve takes one of each per delivery asked for, and
	// dispatch gives back the one the delivery does not use.
	slots, room chan struct{}
	wg          sync.WaitGroup

	mu sync.Mutex
	// groups maps each group with a running handler to the deliveries
	// waiting behind it, oldest first.
	groups map[string][]pending
}

func newDispatcher(n int, run func(pending)) *dispatcher {
	return &dispatcher{run: run, slots: make(chan struct{}, n), room: make(chan struct{}, n), groups: map[string][]pending{}}
}

// reserve waits until one delivery can be taken, then reserves as many
// as can be, up to max; 0 when ctx ended first.
func (d *dispatcher) reserve(ctx context.Context, max int) int {
	select {
	case d.slots <- struct{}{}:
	case <-ctx.Done():
		return 0
	}
	select {
	case d.room <- struct{}{}:
	case <-ctx.Done():
		<-d.slots
		return 0
	}
	n := 1
	for n < max {
		select {
		case d.slots <- struct{}{}:
		default:
			return n
		}
		select {
		case d.room <- struct{}{}:
		default:
			<-d.slots
			return n
		}
		n++
	}
	return n
}

// unreserve gives back n reservations no delivery came for.
func (d *dispatcher) unreserve(n int) {
	for range n {
		<-d.slots
		<-d.room
	}
}

// dispatch runs p, on a reservation, now or behind its group.
func (d *dispatcher) dispatch(p pending) {
	if g := p.m.Group; g != "" {
		d.mu.Lock()
		waiting, busy := d.groups[g]
		if busy {
			d.groups[g] = append(waiting, p)
			d.mu.Unlock()
			<-d.slots
			return
		}
		d.groups[g] = nil
		d.mu.Unlock()
	}
	<-d.room
	d.wg.Add(1)
	go d.work(p)
}

// work runs p, then each delivery of p's group that waits behind it, on
// p's slot.
func (d *dispatcher) work(p pending) {
	defer d.wg.Done()
	defer func() { <-d.slots }()
	for {
		d.run(p)
		next, ok := d.next(p.m.Group)
		if !ok {
			return
		}
		<-d.room
		p = next
	}
}

// next takes the oldest delivery waiting in group g, or forgets g when
// none waits.
func (d *dispatcher) next(g string) (pending, bool) {
	if g == "" {
		return pending{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	waiting := d.groups[g]
	if len(waiting) == 0 {
		delete(d.groups, g)
		return pending{}, false
	}
	p := waiting[0]
	waiting[0] = pending{}
	d.groups[g] = waiting[1:]
	return p, true
}

// wait returns once every dispatched delivery was run.
func (d *dispatcher) wait() { d.wg.Wait() }

// busyGroups is how many groups have a handler running.
func (d *dispatcher) busyGroups() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.groups)
}
