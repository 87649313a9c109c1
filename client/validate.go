package client

import (
	"fmt"
	"time"
)

// Limits the client checks before a request leaves the process. They
// mirror the server's rules (DESIGN.md) so that a bad argument fails at
// once, with the field named, instead of after a network round trip.
const (
	// MaxQueueNameLen is the longest queue name.
	MaxQueueNameLen = 128
	// MaxWait is the longest long-poll wait of one Receive.
	MaxWait = 20 * time.Second
	// MaxReceive is the most messages one Receive may ask for.
	MaxReceive = 1 << 16
)

// validateQueueName checks the [A-Za-z0-9._-]{1,128} rule.
func validateQueueName(field, name string) error {
	if name == "" {
		return invalidArg(field, "queue name is empty; must be 1..%d characters of [A-Za-z0-9._-]", MaxQueueNameLen)
	}
	if len(name) > MaxQueueNameLen {
		return invalidArg(field, "queue name is %d bytes; the limit is %d", len(name), MaxQueueNameLen)
	}
	for i := 0; i < len(name); i++ {
		ch := name[i]
		ok := ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '.' || ch == '_' || ch == '-'
		if !ok {
			return invalidArg(field, "queue name %q has %q at byte %d; allowed are [A-Za-z0-9._-]", name, ch, i)
		}
	}
	return nil
}

func validateNonNegative(field string, d time.Duration) error {
	if d < 0 {
		return invalidArg(field, "must be >= 0, got %v", d)
	}
	return nil
}

func validateReceipts(field string, receipts []Receipt) error {
	if len(receipts) == 0 {
		return invalidArg(field, "at least one receipt is required")
	}
	for i, r := range receipts {
		if r.Attempt == 0 {
			return invalidArg(fmt.Sprintf("%s[%d].Attempt", field, i), "must be >= 1 (a receipt from Receive), got 0")
		}
	}
	return nil
}
