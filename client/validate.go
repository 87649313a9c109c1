package client

import (
	"fmt"
	"time"

	"github.com/quorumq/quorumq/fsm/fsmpb"
	"github.com/quorumq/quorumq/transport/wire"
)

// MaxWait is the longest long-poll wait of one Receive the wire allows.
const MaxWait = wire.DefaultMaxWait

// limits are the server's default limits, which are the state machine's
// where it has one; a request beyond them is refused before it is sent.
var limits = wire.DefaultLimits()

// validateQueueName checks the [A-Za-z0-9._-]{1,128} rule with the same
// function the server uses, before a request leaves the process.
func validateQueueName(field, name string) error {
	if err := wire.ValidateQueueName(field, name); err != nil {
		return fromStatus("", err)
	}
	return nil
}

// validateMessage checks m with the state machine's message rule (sizes,
// attributes), as the server will.
func validateMessage(field string, m *fsmpb.Message) error {
	if err := wire.ValidateMessage(field, m); err != nil {
		return fromStatus("", err)
	}
	return nil
}

// validateNackReason checks a nack or reject reason with the server's
// rule.
func validateNackReason(field, reason string) error {
	if err := wire.ValidateNackReason(field, reason); err != nil {
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

// validateDuration checks that d is within 0..max.
func validateDuration(field string, d, max time.Duration) error {
	if d < 0 || d > max {
		return invalidArg(field, "must be 0..%v, got %v", max, d)
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
