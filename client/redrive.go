package client

import (
	"context"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc"

	"github.com/quorumq/quorumq/transport/quorumqpb"
)

// RedriveOption configures Redrive.
type RedriveOption func(*redriveOptions)

type redriveOptions struct {
	batch int
	rate  float64
}

// WithRedriveBatch sets how many messages one Raft command moves: 1 to
// 1000, default 100.
func WithRedriveBatch(n int) RedriveOption { return func(o *redriveOptions) { o.batch = n } }

// WithRedriveRate paces a redrive to at most perSecond messages a second
// on average (0: as fast as batches go), so that consumers of the target
// are not flooded with a backlog. The pacing is the client's: a batch is
// at most a tenth of a second's worth (the batch size is cut to
// perSecond/10, at least 1), and the next one is sent once the messages
// moved so far are due at that rate.
func WithRedriveRate(perSecond float64) RedriveOption {
	return func(o *redriveOptions) { o.rate = perSecond }
}

// Redrive moves the dead letters of queue back into the queue each came
// from, or into to when it is not "", in id order, until none is left or
// max are moved (0: no limit), and returns how many it moved. A dead
// message of queue itself (dead-lettered when it had no dead-letter queue)
// goes back into queue. Each batch is one Raft command that deletes its
// messages from queue and enqueues them in the target, so a failure never
// loses or duplicates one; a message keeps its body, attributes and dedup
// ID, and is not taken for a duplicate in the target. A dead letter whose
// source queue is unknown or gone is left in place.
//
// A batch with an unknown outcome is not retried (a retry would move the
// next batch): the error matches ErrOutcomeUnknown and the count covers
// the batches known to be applied.
func (c *Client) Redrive(ctx context.Context, queue, to string, max int, opts ...RedriveOption) (int, error) {
	o := redriveOptions{batch: 100}
	for _, opt := range opts {
		opt(&o)
	}
	if err := validateQueueName("Redrive queue", queue); err != nil {
		return 0, err
	}
	if to != "" {
		if err := validateQueueName("Redrive to", to); err != nil {
			return 0, err
		}
	}
	if max < 0 {
		return 0, invalidArg("Redrive max", "must be >= 0 (0: no limit), got %d", max)
	}
	if o.batch < 1 || o.batch > limits.MaxReceipts {
		return 0, invalidArg("WithRedriveBatch", "must be 1..%d, got %d", limits.MaxReceipts, o.batch)
	}
	if !(o.rate >= 0) || math.IsInf(o.rate, 0) {
		return 0, invalidArg("WithRedriveRate", "must be a finite number of messages per second >= 0 (0: no limit), got %v", o.rate)
	}
	if o.rate > 0 && float64(o.batch) > o.rate/10 {
		o.batch = int(math.Max(1, o.rate/10)) // at most a tenth of a second's worth per batch
	}
	start := time.Now()
	moved := 0
	for max == 0 || moved < max {
		if o.rate > 0 && moved > 0 {
			due := start.Add(time.Duration(float64(moved) / o.rate * float64(time.Second)))
			if err := sleepCtx(ctx, time.Until(due)); err != nil {
				return moved, fmt.Errorf("redrive after %d moved: %w", moved, err)
			}
		}
		n := o.batch
		if max > 0 {
			n = min(n, max-moved)
		}
		req := &quorumqpb.RedriveRequest{Queue: queue, To: to, Max: uint32(n)}
		var resp *quorumqpb.RedriveResponse
		err := c.call(ctx, "Redrive", notIdempotent, 0, func(ctx context.Context, cc *grpc.ClientConn) error {
			var err error
			resp, err = quorumqpb.NewQueueClient(cc).Redrive(ctx, req)
			return err
		}, nil)
		if err != nil {
			return moved, fmt.Errorf("redrive after %d moved: %w", moved, err)
		}
		moved += int(resp.GetMoved())
		if int(resp.GetMoved()) < n {
			break
		}
	}
	return moved, nil
}
