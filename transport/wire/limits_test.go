package wire

import (
	"strings"
	"testing"
	"time"
)

// A limit above the state machine's would let requests through the API
// that Apply refuses after a log entry: such limits are refused.
func TestLimitsAboveTheStateMachinesAreRefused(t *testing.T) {
	if err := (Limits{}).Check(); err != nil {
		t.Fatalf("default limits: %v", err)
	}
	err := Limits{MaxDelay: 24 * time.Hour}.Check()
	if err == nil || err.Error() != "limits: max delay is 24h0m0s, the state machine allows at most 12h0m0s" {
		t.Fatalf("a 24 h max delay: %v", err)
	}
	if err := (Limits{MaxAttributes: 33}).Check(); err == nil || !strings.Contains(err.Error(), "max attributes is 33, the state machine allows at most 32") {
		t.Fatalf("33 attributes: %v", err)
	}
}
