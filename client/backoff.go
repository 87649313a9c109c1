package client

import (
	"context"
	"math/rand/v2"
	"time"
)

// backoff yields jittered exponential delays between retries: the n-th
// delay is drawn uniformly from [d/2, d] with d = min·2ⁿ capped at max. The
// jitter keeps many clients that lost the same leader from retrying in
// lock-step; the floor of d/2 keeps a retry from firing at once.
type backoff struct {
	min, max time.Duration
	n        int
}

func (b *backoff) next() time.Duration {
	d := b.max
	if b.n < 30 {
		if s := b.min << b.n; s > 0 && s < b.max {
			d = s
		}
	}
	b.n++
	half := d / 2
	return half + rand.N(d-half+1)
}

// sleepCtx waits for d or until ctx is done, whichever comes first.
func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
