package client

import (
	"fmt"
	"time"

	"github.com/quorumq/quorumq/transport"
)

// MaxWait is the longest long-poll wait of one Receive the wire allows.
const MaxWait = 20 * time.Second

// validateQueueName checks the [A-Za-z0-9._-]{1,128} rule with the same
// function the server uses, before a request leaves the process.
func validateQueueName(field, name string) error {
	if err := transport.ValidateQueueName(field, name); err != nil {
		return fromStatus("", err)
	}
	return nil
}

func validateNonNegative(field string, d time.Duration) error {
	if d < 0 {
		return invalidArg(field, "must be >= 0, got %v", d)
	}
	return nil
}

func validateReceipts(field, queue string, receipts []Receipt) error {
	if len(receipts) == 0 {
		return invalidArg(field, "at least one receipt is required")
	}
	for i, r := range receipts {
		if r.Attempt == 0 {
			return invalidArg(fmt.Sprintf("%s[%d].Attempt", field, i), "must be >= 1 (a receipt from Receive), got 0")
		}
		if r.Queue != "" && r.Queue != queue {
			return fmt.Errorf("%w: %s[%d]: receipt of queue %q used on queue %q", ErrWrongQueue, field, i, r.Queue, queue)
		}
	}
	return nil
}
